//! Drawing one face with tiny-skia.
//!
//! Face geometry lives in *face units*: origin at the face centre, y down, 1 = the face's
//! half-height. One transform (scale, roll, translate) maps face units to pixels, so every
//! feature follows the head pose.

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tiny_skia::{
    Color, FillRule, GradientStop, LineCap, LineJoin, LinearGradient, Mask, Paint, Path,
    PathBuilder, Pixmap, Point, Rect, Shader, SpreadMode, Stroke, Transform,
};

use super::params::{FaceParams, Look, Occluder};
use super::rng::uniform;

/// The face box in pixels, as AffectNet's `face_x, face_y, face_width, face_height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaceBox {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// A rendered image with its annotations.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub image: RgbImage,
    pub face_box: FaceBox,
    /// Pixel positions of the left eye, right eye, nose tip, left and right mouth corners.
    pub landmarks: [[f32; 2]; 5],
}

/// The box side over the face half-height: the box spans the face outline plus the ears.
const BOX_PER_UNIT: f32 = 2.2;

/// The (square) face box of a look in a `size` x `size` image; always inside the image.
pub fn face_box(look: &Look, size: u32) -> FaceBox {
    let side = ((look.box_frac * size as f32).round() as u32).clamp(1, size.max(1));
    let room = size.saturating_sub(side) as f32;
    let place = |t: f32| (t.clamp(0.0, 1.0) * room).round() as u32;
    FaceBox {
        x: place(look.box_pos[0]),
        y: place(look.box_pos[1]),
        width: side,
        height: side,
    }
}

/// Draws `p` into a `size` x `size` RGB image. A pure function of its arguments.
pub fn render(p: &FaceParams, size: u32) -> Rendered {
    let size = size.max(1);
    let mut pm = Pixmap::new(size, size).expect("non-zero pixmap size");
    let mut rng = ChaCha8Rng::seed_from_u64(p.look.texture_seed);
    background(&mut pm, &mut rng);
    let fb = face_box(&p.look, size);
    let unit = fb.width as f32 / BOX_PER_UNIT;
    let ts = Transform::from_scale(unit, unit)
        .post_rotate(p.look.roll_deg)
        .post_translate(
            fb.x as f32 + fb.width as f32 / 2.0,
            fb.y as f32 + fb.height as f32 / 2.0,
        );
    let geo = Geometry::new(p);
    if p.look.has_face {
        let mut d = Drawer { pm: &mut pm, ts };
        d.face(p, &geo);
    }
    let landmarks = geo.landmarks().map(|[x, y]| {
        let mut pt = Point::from_xy(x, y);
        ts.map_point(&mut pt);
        [pt.x, pt.y]
    });
    Rendered {
        image: finish(&pm, p.look.gain, p.look.noise, &mut rng),
        face_box: fb,
        landmarks,
    }
}

/// Feature positions in face units, shared by the drawing and the landmarks.
struct Geometry {
    eye: [[f32; 2]; 2],
    eye_half_w: f32,
    eye_half_h: f32,
    nose_x: f32,
    mouth_l: [f32; 2],
    mouth_r: [f32; 2],
    mouth_mid: f32,
    /// Lip gap at the middle of the mouth.
    mouth_gap: f32,
}

impl Geometry {
    fn new(p: &FaceParams) -> Self {
        let x = &p.expr;
        let yaw = p.look.yaw;
        let mx = yaw * 1.1;
        let half_w = 0.14 + 0.2 * x.mouth_width;
        let mid = 0.52;
        let lift = 0.14 * x.mouth_curve;
        Geometry {
            eye: [[-0.33 + yaw, -0.05], [0.33 + yaw, -0.05]],
            eye_half_w: 0.15,
            eye_half_h: 0.02 + 0.12 * x.eye_open,
            nose_x: yaw * 1.25,
            mouth_l: [mx - half_w, mid - lift - 0.16 * x.mouth_asym],
            mouth_r: [mx + half_w, mid - lift],
            mouth_mid: mid,
            mouth_gap: 0.26 * x.mouth_open,
        }
    }

    fn landmarks(&self) -> [[f32; 2]; 5] {
        [
            self.eye[0],
            self.eye[1],
            [self.nose_x, 0.27],
            self.mouth_l,
            self.mouth_r,
        ]
    }
}

fn shade(c: [u8; 3], k: f32) -> [u8; 3] {
    c.map(|v| (v as f32 * k).clamp(0.0, 255.0) as u8)
}

fn paint(c: [u8; 3], alpha: f32) -> Paint<'static> {
    let mut p = Paint::default();
    p.set_color_rgba8(c[0], c[1], c[2], (alpha.clamp(0.0, 1.0) * 255.0) as u8);
    p.anti_alias = true;
    p
}

fn oval(cx: f32, cy: f32, rx: f32, ry: f32) -> Option<Path> {
    PathBuilder::from_oval(Rect::from_xywh(cx - rx, cy - ry, 2.0 * rx, 2.0 * ry)?)
}

/// A quadratic curve from `a` to `b` whose midpoint sits at height `mid_y`.
fn quad_through(pb: &mut PathBuilder, a: [f32; 2], b: [f32; 2], mid_y: f32) {
    let cy = 2.0 * mid_y - (a[1] + b[1]) / 2.0;
    pb.quad_to((a[0] + b[0]) / 2.0, cy, b[0], b[1]);
}

struct Drawer<'a> {
    pm: &'a mut Pixmap,
    ts: Transform,
}

impl Drawer<'_> {
    fn fill(&mut self, path: Option<Path>, paint: &Paint, mask: Option<&Mask>) {
        if let Some(path) = path {
            self.pm
                .fill_path(&path, paint, FillRule::Winding, self.ts, mask);
        }
    }

    fn stroke(&mut self, path: Option<Path>, paint: &Paint, width: f32) {
        let stroke = Stroke {
            width,
            line_cap: LineCap::Round,
            line_join: LineJoin::Round,
            ..Stroke::default()
        };
        if let Some(path) = path {
            self.pm.stroke_path(&path, paint, &stroke, self.ts, None);
        }
    }

    fn face(&mut self, p: &FaceParams, g: &Geometry) {
        let l = &p.look;
        let w = l.aspect;
        self.fill(oval(0.0, 2.3, 1.7, 0.95), &paint(l.shirt, 1.0), None);
        let neck = Rect::from_xywh(-0.3, 0.4, 0.6, 1.4).map(PathBuilder::from_rect);
        self.fill(neck, &paint(shade(l.skin, 0.82), 1.0), None);
        if l.hairline.is_some() {
            self.fill(oval(0.0, -0.12, w * 1.15, 1.0), &paint(l.hair, 1.0), None);
        }
        for s in [-1.0, 1.0] {
            let ear = oval(s * w * 0.97, 0.0, 0.11, 0.19);
            self.fill(ear, &paint(shade(l.skin, 0.9), 1.0), None);
        }
        let outline = face_outline(w, l.jaw);
        self.fill(outline.clone(), &paint(l.skin, 1.0), None);
        if let Some(hl) = l.hairline {
            self.fill(fringe(w, hl), &paint(l.hair, 1.0), None);
        }
        self.brows(p);
        self.eyes(p, g);
        self.nose_and_folds(p, g);
        self.mouth(p, g);
        self.lighting(l, outline);
        match l.occluder {
            Some(Occluder::Bar {
                at,
                angle_deg,
                thickness,
                color,
            }) => {
                let ts = self.ts.pre_translate(at[0], at[1]).pre_rotate(angle_deg);
                let bar = Rect::from_xywh(-1.6, -thickness / 2.0, 3.2, thickness)
                    .map(PathBuilder::from_rect);
                if let Some(bar) = bar {
                    self.pm
                        .fill_path(&bar, &paint(color, 1.0), FillRule::Winding, ts, None);
                }
            }
            Some(Occluder::Hand { side, height }) => self.hand(l.skin, side, height),
            None => {}
        }
    }

    fn brows(&mut self, p: &FaceParams) {
        let x = &p.expr;
        let yaw = p.look.yaw;
        let base = -0.34 - 0.15 * x.brow_raise;
        // Brows darker than the hair so they read on every skin tone.
        let color = shade(p.look.hair, 0.35);
        for s in [-1.0f32, 1.0] {
            let inner = [s * 0.1 + yaw, base + 0.11 * x.brow_angle];
            let outer = [s * 0.52 + yaw, base - 0.05 * x.brow_angle];
            let mut pb = PathBuilder::new();
            pb.move_to(inner[0], inner[1]);
            quad_through(&mut pb, inner, outer, (inner[1] + outer[1]) / 2.0 - 0.03);
            self.stroke(pb.finish(), &paint(color, 1.0), 0.09);
        }
    }

    fn eyes(&mut self, p: &FaceParams, g: &Geometry) {
        let (hw, hh) = (g.eye_half_w, g.eye_half_h);
        let dark = [35, 28, 28];
        for [cx, cy] in g.eye {
            let almond = |lower: bool| {
                let mut pb = PathBuilder::new();
                pb.move_to(cx - hw, cy);
                pb.quad_to(cx, cy - 2.0 * hh, cx + hw, cy);
                if lower {
                    pb.quad_to(cx, cy + 2.0 * hh, cx - hw, cy);
                    pb.close();
                }
                pb.finish()
            };
            self.fill(almond(true), &paint([240, 238, 232], 1.0), None);
            // The iris is clipped to the eye opening so a half-shut eye shows half an iris.
            let (w, h) = (self.pm.width(), self.pm.height());
            if let (Some(mut mask), Some(eye)) = (Mask::new(w, h), almond(true)) {
                mask.fill_path(&eye, FillRule::Winding, true, self.ts);
                let ix = cx + p.look.yaw * 0.3;
                self.fill(
                    PathBuilder::from_circle(ix, cy, 0.075),
                    &paint(p.look.iris, 1.0),
                    Some(&mask),
                );
                self.fill(
                    PathBuilder::from_circle(ix, cy, 0.035),
                    &paint([10, 10, 10], 1.0),
                    Some(&mask),
                );
            }
            self.stroke(almond(true), &paint(dark, 1.0), 0.03);
            self.stroke(almond(false), &paint(dark, 1.0), 0.06);
        }
    }

    fn nose_and_folds(&mut self, p: &FaceParams, g: &Geometry) {
        let x = &p.expr;
        let skin = p.look.skin;
        let nx = g.nose_x;
        let mut pb = PathBuilder::new();
        pb.move_to(nx + 0.02, 0.0);
        pb.line_to(nx + 0.07, 0.22);
        pb.quad_to(nx, 0.31, nx - 0.07, 0.24);
        self.stroke(pb.finish(), &paint(shade(skin, 0.6), 1.0), 0.045);
        if x.nose_wrinkle > 0.02 {
            let ink = paint(shade(skin, 0.4), x.nose_wrinkle);
            for y in [-0.02, 0.06, 0.14] {
                let mut pb = PathBuilder::new();
                pb.move_to(nx - 0.11, y + 0.02);
                pb.quad_to(nx, y - 0.03, nx + 0.11, y + 0.02);
                self.stroke(pb.finish(), &ink, 0.04);
            }
            for s in [-1.0, 1.0] {
                let mut pb = PathBuilder::new();
                pb.move_to(nx + s * 0.13, 0.02);
                pb.line_to(nx + s * 0.22, 0.16);
                self.stroke(pb.finish(), &ink, 0.04);
            }
        }
        let smile = x.mouth_curve.max(0.0);
        if smile > 0.02 {
            let ink = paint(shade(skin, 0.6), smile);
            for (s, c) in [(-1.0, g.mouth_l), (1.0, g.mouth_r)] {
                let mut pb = PathBuilder::new();
                pb.move_to(nx + s * 0.15, 0.2);
                pb.quad_to(s * 0.34 + nx, 0.36, c[0] + s * 0.05, c[1] + 0.03);
                self.stroke(pb.finish(), &ink, 0.035);
            }
        }
        let asym = x.mouth_asym;
        if asym.abs() > 0.02 {
            let c = g.mouth_l;
            let up = asym.signum();
            let mut pb = PathBuilder::new();
            pb.move_to(c[0] - 0.02, c[1]);
            pb.quad_to(c[0] - 0.09, c[1] - 0.02 * up, c[0] - 0.08, c[1] - 0.11 * up);
            self.stroke(pb.finish(), &paint(shade(skin, 0.55), asym.abs()), 0.04);
        }
    }

    fn mouth(&mut self, p: &FaceParams, g: &Geometry) {
        let x = &p.expr;
        let lip = [
            (p.look.skin[0] as f32 * 0.3 + 125.0) as u8,
            (p.look.skin[1] as f32 * 0.3 + 35.0) as u8,
            (p.look.skin[2] as f32 * 0.3 + 40.0) as u8,
        ];
        let (a, b, mid) = (g.mouth_l, g.mouth_r, g.mouth_mid);
        let gap = g.mouth_gap;
        if gap < 0.025 {
            let mut pb = PathBuilder::new();
            pb.move_to(a[0], a[1]);
            quad_through(&mut pb, a, b, mid);
            self.stroke(pb.finish(), &paint(lip, 1.0), 0.075);
            return;
        }
        // Disgust lifts the upper lip; the lower lip opens most of the gap.
        let top = mid - 0.25 * gap - 0.06 * x.nose_wrinkle;
        let bottom = mid + 0.75 * gap;
        let inside = || {
            let mut pb = PathBuilder::new();
            pb.move_to(a[0], a[1]);
            quad_through(&mut pb, a, b, top);
            quad_through(&mut pb, b, a, bottom);
            pb.close();
            pb.finish()
        };
        self.fill(inside(), &paint([55, 15, 20], 1.0), None);
        if x.mouth_open > 0.2 {
            let teeth = (0.4 * (bottom - top)).min(0.07);
            let mut pb = PathBuilder::new();
            pb.move_to(a[0], a[1]);
            quad_through(&mut pb, a, b, top);
            quad_through(&mut pb, b, a, top + teeth);
            pb.close();
            self.fill(pb.finish(), &paint([238, 236, 225], 1.0), None);
        }
        self.stroke(inside(), &paint(lip, 1.0), 0.06);
    }

    fn lighting(&mut self, l: &Look, outline: Option<Path>) {
        let (sin, cos) = l.light_deg.to_radians().sin_cos();
        let a = (l.light * 0.45 * 255.0) as u8;
        let shader = LinearGradient::new(
            Point::from_xy(cos, sin),
            Point::from_xy(-cos, -sin),
            vec![
                GradientStop::new(0.0, Color::from_rgba8(255, 255, 255, a)),
                GradientStop::new(0.5, Color::from_rgba8(128, 128, 128, 0)),
                GradientStop::new(1.0, Color::from_rgba8(0, 0, 0, a)),
            ],
            SpreadMode::Pad,
            Transform::identity(),
        );
        if let Some(shader) = shader {
            let p = Paint {
                shader,
                anti_alias: true,
                ..Paint::default()
            };
            self.fill(outline, &p, None);
        }
    }

    fn hand(&mut self, skin: [u8; 3], side: f32, height: f32) {
        let color = shade(skin, 0.95);
        let edge = paint(shade(skin, 0.7), 1.0);
        let (px, py) = (side * 0.55, height + 0.2);
        for k in 0..4 {
            let fx = px - side * 0.05 + (k as f32 - 1.5) * 0.11;
            let mut pb = PathBuilder::new();
            pb.move_to(fx, py - 0.1);
            pb.line_to(fx - side * 0.28, py - 0.5 + (k as f32 - 1.5).abs() * 0.06);
            let path = pb.finish();
            self.stroke(path.clone(), &edge, 0.13);
            self.stroke(path, &paint(color, 1.0), 0.1);
        }
        self.fill(oval(px, py, 0.3, 0.32), &paint(color, 1.0), None);
        self.stroke(oval(px, py, 0.3, 0.32), &edge, 0.02);
    }
}

fn face_outline(w: f32, jaw: f32) -> Option<Path> {
    let n = 64;
    let mut pb = PathBuilder::new();
    for k in 0..n {
        let t = std::f32::consts::TAU * k as f32 / n as f32;
        let (s, c) = t.sin_cos();
        let narrow = if s > 0.0 {
            1.0 - (1.0 - jaw) * s * s
        } else {
            1.0
        };
        let (x, y) = (w * c * narrow, s);
        if k == 0 {
            pb.move_to(x, y);
        } else {
            pb.line_to(x, y);
        }
    }
    pb.close();
    pb.finish()
}

/// The hair over the forehead: the outline's top arc above `hairline`, closed by a wavy edge.
fn fringe(w: f32, hairline: f32) -> Option<Path> {
    let t0 = std::f32::consts::PI - hairline.asin();
    let t1 = std::f32::consts::TAU + hairline.asin();
    let n = 24;
    let mut pb = PathBuilder::new();
    for k in 0..=n {
        let t = t0 + (t1 - t0) * k as f32 / n as f32;
        let (s, c) = t.sin_cos();
        let (x, y) = (w * c * 1.03, s * 1.03);
        if k == 0 {
            pb.move_to(x, y);
        } else {
            pb.line_to(x, y);
        }
    }
    let x_end = w * t1.cos() * 1.03;
    for k in 0..=n {
        let x = x_end - 2.0 * x_end * k as f32 / n as f32;
        pb.line_to(x, hairline + 0.04 * (x * 9.0).sin().abs());
    }
    pb.close();
    pb.finish()
}

fn random_color(rng: &mut impl Rng) -> Color {
    let [r, g, b] = [0; 3].map(|_| rng.random_range(10..=245u8));
    Color::from_rgba8(r, g, b, 255)
}

/// Gradient base, then random blobs and/or stripes.
fn background(pm: &mut Pixmap, rng: &mut impl Rng) {
    let s = pm.width() as f32;
    let full = Rect::from_xywh(0.0, 0.0, s, s).expect("positive size");
    let start = Point::from_xy(uniform(rng, 0.0, s), uniform(rng, 0.0, s));
    let end = Point::from_xy(uniform(rng, 0.0, s), uniform(rng, 0.0, s) + s);
    let (c0, c1) = (random_color(rng), random_color(rng));
    let shader = LinearGradient::new(
        start,
        end,
        vec![GradientStop::new(0.0, c0), GradientStop::new(1.0, c1)],
        SpreadMode::Pad,
        Transform::identity(),
    )
    .unwrap_or(Shader::SolidColor(c0));
    let p = Paint {
        shader,
        ..Paint::default()
    };
    pm.fill_rect(full, &p, Transform::identity(), None);
    let kind = rng.random_range(0..3);
    if kind != 1 {
        for _ in 0..rng.random_range(4..12) {
            let mut c = random_color(rng);
            c.set_alpha(uniform(rng, 0.25, 0.8));
            let mut p = Paint::default();
            p.set_color(c);
            p.anti_alias = true;
            let r = uniform(rng, 0.04, 0.25) * s;
            if let Some(path) =
                PathBuilder::from_circle(uniform(rng, 0.0, s), uniform(rng, 0.0, s), r)
            {
                pm.fill_path(&path, &p, FillRule::Winding, Transform::identity(), None);
            }
        }
    }
    if kind != 0 {
        let mut c = random_color(rng);
        c.set_alpha(uniform(rng, 0.3, 0.7));
        let mut p = Paint::default();
        p.set_color(c);
        p.anti_alias = true;
        let ts = Transform::from_rotate_at(uniform(rng, 0.0, 180.0), s / 2.0, s / 2.0);
        let period = uniform(rng, 0.08, 0.25) * s;
        let thick = period * uniform(rng, 0.2, 0.6);
        let mut y = -s;
        while y < 2.0 * s {
            if let Some(r) = Rect::from_xywh(-s, y, 3.0 * s, thick) {
                pm.fill_rect(r, &p, ts, None);
            }
            y += period;
        }
    }
}

/// Exposure gain and approximately Gaussian sensor noise (Irwin-Hall sum of four uniform bytes:
/// mean 510, variance 4 (256^2 - 1) / 12 = 21845), from the opaque pixmap to RGB.
fn finish(pm: &Pixmap, gain: f32, noise: f32, rng: &mut impl Rng) -> RgbImage {
    let (w, h) = (pm.width(), pm.height());
    let mut out = RgbImage::new(w, h);
    let scale = noise / 21845f32.sqrt();
    for (dst, src) in out.pixels_mut().zip(pm.pixels()) {
        let c = [src.red(), src.green(), src.blue()];
        for (d, v) in dst.0.iter_mut().zip(c) {
            let u: u32 = rng.random();
            let sum = (u & 0xff) + ((u >> 8) & 0xff) + ((u >> 16) & 0xff) + (u >> 24);
            let n = (sum as f32 - 510.0) * scale;
            // `as u8` saturates, so +0.5 then truncation rounds without a libm call.
            *d = (v as f32 * gain + n + 0.5) as u8;
        }
    }
    out
}
