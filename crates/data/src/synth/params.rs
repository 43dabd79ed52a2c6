//! The drawn parameters of a synthetic face, the class prototypes, and the valence/arousal
//! functions of the parameters.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::rng::{normal, uniform};

/// The expression parameters: what the class sets and what valence/arousal are computed from.
///
/// Ranges: `mouth_curve`, `mouth_asym`, `brow_raise`, `brow_angle` in [-1, 1]; the others in
/// [0, 1]. [`sample_params`] clips every field to its range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Expression {
    /// Mouth corners up (+, smile) or down (-).
    pub mouth_curve: f32,
    /// How far the lips part (0 closed, 1 wide open).
    pub mouth_open: f32,
    /// Mouth width (0 a small "O", 1 stretched wide).
    pub mouth_width: f32,
    /// One-sided raise of the left mouth corner (contempt's smirk); sign picks up (+) or down (-).
    pub mouth_asym: f32,
    /// Eye opening (0 shut, 0.5 relaxed, 1 wide).
    pub eye_open: f32,
    /// Brows raised (+) or lowered (-).
    pub brow_raise: f32,
    /// Brow slant: + inner ends pulled down (frown, anger), - inner ends up (sadness, fear).
    pub brow_angle: f32,
    /// Nose wrinkle and raised upper lip (disgust).
    pub nose_wrinkle: f32,
}

impl Expression {
    /// The relaxed face every prototype is measured from.
    pub const NEUTRAL: Expression = Expression {
        mouth_curve: 0.0,
        mouth_open: 0.0,
        mouth_width: 0.55,
        mouth_asym: 0.0,
        eye_open: 0.5,
        brow_raise: 0.0,
        brow_angle: 0.0,
        nose_wrinkle: 0.0,
    };

    /// The fields in declaration order.
    pub fn as_array(&self) -> [f32; 8] {
        [
            self.mouth_curve,
            self.mouth_open,
            self.mouth_width,
            self.mouth_asym,
            self.eye_open,
            self.brow_raise,
            self.brow_angle,
            self.nose_wrinkle,
        ]
    }

    /// The inverse of [`Expression::as_array`].
    pub fn from_array(a: [f32; 8]) -> Self {
        Expression {
            mouth_curve: a[0],
            mouth_open: a[1],
            mouth_width: a[2],
            mouth_asym: a[3],
            eye_open: a[4],
            brow_raise: a[5],
            brow_angle: a[6],
            nose_wrinkle: a[7],
        }
    }

    /// Clips every field to its documented range.
    pub fn clipped(&self) -> Self {
        let lo = [-1.0, 0.0, 0.0, -1.0, 0.0, -1.0, -1.0, 0.0];
        let a = self.as_array();
        Self::from_array(std::array::from_fn(|i| a[i].clamp(lo[i], 1.0)))
    }
}

/// The prototype expression of a class code 0..=7 (AffectNet order); `None` for other codes.
pub fn prototype(code: i64) -> Option<Expression> {
    let n = Expression::NEUTRAL;
    let e = match code {
        0 => n,
        1 => Expression {
            mouth_curve: 0.8,
            mouth_open: 0.5,
            mouth_width: 0.95,
            eye_open: 0.6,
            brow_raise: 0.2,
            ..n
        },
        2 => Expression {
            mouth_curve: -0.75,
            mouth_width: 0.6,
            eye_open: 0.2,
            brow_raise: -0.2,
            brow_angle: -0.75,
            ..n
        },
        3 => Expression {
            mouth_open: 0.85,
            mouth_width: 0.15,
            eye_open: 0.95,
            brow_raise: 0.9,
            ..n
        },
        4 => Expression {
            mouth_curve: -0.35,
            mouth_open: 0.5,
            mouth_width: 1.0,
            eye_open: 0.95,
            brow_raise: 0.6,
            brow_angle: -0.7,
            ..n
        },
        5 => Expression {
            mouth_curve: -0.5,
            mouth_open: 0.2,
            mouth_width: 0.55,
            eye_open: 0.25,
            brow_raise: -0.4,
            brow_angle: 0.3,
            nose_wrinkle: 1.0,
            ..n
        },
        6 => Expression {
            mouth_curve: -0.4,
            mouth_open: 0.1,
            mouth_width: 0.45,
            eye_open: 0.8,
            brow_raise: -0.7,
            brow_angle: 1.0,
            nose_wrinkle: 0.2,
            ..n
        },
        7 => Expression {
            mouth_asym: 0.9,
            eye_open: 0.4,
            brow_raise: 0.1,
            ..n
        },
        _ => return None,
    };
    Some(e)
}

/// Valence and arousal of an expression, clipped to [-1, 1] (no label noise).
///
/// With `e = eye_open - 0.5` and `relu(x) = max(x, 0)`:
///
/// ```text
/// valence = 0.8 mouth_curve - 0.3 |brow_angle| - 0.3 nose_wrinkle - 0.5 |mouth_asym|
/// arousal = 0.6 e + 0.4 mouth_open + 0.2 brow_raise + 0.5 relu(brow_angle) + 0.2 nose_wrinkle
/// ```
pub fn expression_va(x: &Expression) -> (f32, f32) {
    let v = 0.8 * x.mouth_curve
        - 0.3 * x.brow_angle.abs()
        - 0.3 * x.nose_wrinkle
        - 0.5 * x.mouth_asym.abs();
    let a = 0.6 * (x.eye_open - 0.5)
        + 0.4 * x.mouth_open
        + 0.2 * x.brow_raise
        + 0.5 * x.brow_angle.max(0.0)
        + 0.2 * x.nose_wrinkle;
    (v.clamp(-1.0, 1.0), a.clamp(-1.0, 1.0))
}

/// Valence and arousal of a face: [`expression_va`] of its expression.
pub fn valence_arousal(p: &FaceParams) -> (f32, f32) {
    expression_va(&p.expr)
}

/// Everything that varies between images but carries no label: pose, shape, colours, scene.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Look {
    /// `false` draws the background only (AffectNet's No-Face rows).
    pub has_face: bool,
    /// Face box side as a fraction of the image side.
    pub box_frac: f32,
    /// Face box centre, in [0, 1] of the free room on each axis.
    pub box_pos: [f32; 2],
    /// Head roll in degrees.
    pub roll_deg: f32,
    /// Horizontal shift of the features inside the face outline (a small yaw), in face units.
    pub yaw: f32,
    /// Face half-width over half-height.
    pub aspect: f32,
    /// Jaw width at the chin relative to the cheeks (smaller is a narrower, pointier jaw).
    pub jaw: f32,
    pub skin: [u8; 3],
    pub hair: [u8; 3],
    /// Hairline height in face units (more negative is higher); `None` for no fringe.
    pub hairline: Option<f32>,
    pub iris: [u8; 3],
    pub shirt: [u8; 3],
    /// Direction the light comes from, in degrees, and its strength in [0, 1].
    pub light_deg: f32,
    pub light: f32,
    /// Global exposure gain applied to the finished image.
    pub gain: f32,
    /// Standard deviation of the per-pixel sensor noise, in 8-bit levels.
    pub noise: f32,
    pub occluder: Option<Occluder>,
    /// Seeds the background texture and the sensor noise.
    pub texture_seed: u64,
}

/// Something in front of the face.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Occluder {
    /// A bar across the face: centre (face units), angle (degrees), thickness, colour.
    Bar {
        at: [f32; 2],
        angle_deg: f32,
        thickness: f32,
        color: [u8; 3],
    },
    /// A hand-like blob over one side of the lower face (`side` is -1 or 1).
    Hand { side: f32, height: f32 },
}

/// All drawn parameters of one image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FaceParams {
    pub expr: Expression,
    pub look: Look,
}

/// The range of the intensity that scales a prototype's distance from neutral (mean 1).
pub const INTENSITY: (f32, f32) = (0.8, 1.2);

/// Per-field standard deviation of the expression jitter around a prototype.
pub const JITTER: [f32; 8] = [0.08, 0.06, 0.08, 0.06, 0.07, 0.1, 0.08, 0.08];

/// Samples the parameters of one image of AffectNet code `code` (0..=10).
///
/// Codes 0..=7 vary around their prototype: an intensity in [`INTENSITY`] scales the prototype's
/// distance from neutral, then each field gets a small Gaussian jitter. Codes 8 (None) and 9
/// (Uncertain) blend two random prototypes; code 10 (No-Face) draws no face. Codes outside 0..=10
/// are treated as 10.
pub fn sample_params(code: i64, rng: &mut impl Rng) -> FaceParams {
    let n = Expression::NEUTRAL.as_array();
    let expr = match prototype(code) {
        Some(p) => {
            let t = uniform(rng, INTENSITY.0, INTENSITY.1);
            let p = p.as_array();
            Expression::from_array(std::array::from_fn(|i| {
                n[i] + t * (p[i] - n[i]) + JITTER[i] * normal(rng)
            }))
        }
        None => {
            let a = prototype(rng.random_range(0..8)).unwrap().as_array();
            let b = prototype(rng.random_range(0..8)).unwrap().as_array();
            let w = uniform(rng, 0.3, 0.7);
            Expression::from_array(std::array::from_fn(|i| w * a[i] + (1.0 - w) * b[i]))
        }
    }
    .clipped();
    let mut look = sample_look(rng);
    look.has_face = (0..=9).contains(&code);
    FaceParams { expr, look }
}

fn pick<T: Copy>(rng: &mut impl Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn jitter_color(rng: &mut impl Rng, c: [u8; 3], amount: f32) -> [u8; 3] {
    let k = uniform(rng, 1.0 - amount, 1.0 + amount);
    c.map(|v| (v as f32 * k + normal(rng) * 6.0).clamp(0.0, 255.0) as u8)
}

fn random_color(rng: &mut impl Rng) -> [u8; 3] {
    [0; 3].map(|_| rng.random_range(20..=235u8))
}

fn sample_look(rng: &mut impl Rng) -> Look {
    const SKINS: [[u8; 3]; 6] = [
        [245, 214, 190],
        [232, 190, 160],
        [210, 160, 120],
        [180, 125, 90],
        [140, 95, 65],
        [115, 78, 55],
    ];
    const HAIRS: [[u8; 3]; 6] = [
        [25, 20, 18],
        [60, 40, 25],
        [110, 75, 40],
        [200, 165, 110],
        [150, 150, 150],
        [120, 50, 30],
    ];
    const IRISES: [[u8; 3]; 4] = [[70, 45, 25], [60, 100, 150], [70, 110, 70], [40, 30, 25]];
    let occluder = (rng.random::<f32>() < 0.05).then(|| {
        if rng.random::<bool>() {
            Occluder::Bar {
                at: [uniform(rng, -0.4, 0.4), uniform(rng, -0.2, 0.7)],
                angle_deg: uniform(rng, -60.0, 60.0),
                thickness: uniform(rng, 0.12, 0.22),
                color: random_color(rng),
            }
        } else {
            Occluder::Hand {
                side: if rng.random::<bool>() { 1.0 } else { -1.0 },
                height: uniform(rng, 0.35, 0.75),
            }
        }
    });
    let skin = pick(rng, &SKINS);
    let hair = pick(rng, &HAIRS);
    Look {
        has_face: true,
        box_frac: uniform(rng, 0.5, 0.8),
        box_pos: [rng.random::<f32>(), rng.random::<f32>()],
        roll_deg: (normal(rng) * 6.0).clamp(-15.0, 15.0),
        yaw: (normal(rng) * 0.06).clamp(-0.14, 0.14),
        aspect: uniform(rng, 0.68, 0.82),
        jaw: uniform(rng, 0.6, 0.95),
        skin: jitter_color(rng, skin, 0.08),
        hair: jitter_color(rng, hair, 0.1),
        hairline: (rng.random::<f32>() > 0.1).then(|| uniform(rng, -0.8, -0.62)),
        iris: pick(rng, &IRISES),
        shirt: random_color(rng),
        light_deg: uniform(rng, 0.0, 360.0),
        light: uniform(rng, 0.0, 0.6),
        gain: uniform(rng, 0.8, 1.15),
        noise: uniform(rng, 1.0, 6.0),
        occluder,
        texture_seed: rng.random(),
    }
}
