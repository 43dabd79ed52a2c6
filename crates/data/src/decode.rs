//! Image decoding shared by dataset preparation and prediction, so a face is read the same way
//! for training and for inference.
//!
//! - Formats: JPEG, PNG, BMP, TIFF, WebP and GIF (its first frame), recognised by their content
//!   (the extension only decides which files a folder listing offers, in any letter case).
//! - Orientation: the EXIF orientation (or TIFF's orientation tag) is applied, so a phone photo
//!   stored sideways comes out upright, as every photo viewer shows it.
//! - Limits against decompression bombs (a few bytes claiming a gigapixel): at most
//!   [`MAX_SIDE`] pixels a side and [`MAX_DECODED_BYTES`] of decoded pixels, checked from the
//!   header before the pixel buffer is allocated, and files of at most [`MAX_FILE_BYTES`]. A
//!   decode thus holds at most the file plus about twice the decoded limit (the decoded buffer,
//!   then its RGB copy when the source is not 8-bit RGB, or the rotated copy). 512 MiB is the
//!   `image` crate's own default allocation limit and holds any 8-bit RGB photo up to 178
//!   megapixels (a 108-megapixel phone photo, 12000 x 9000, is 309 MiB); 2^14 a side admits
//!   every camera's frame. Beyond that a file is refused as too large rather than risking the
//!   memory of every decoding thread at once.

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use crate::manifest::SkipReason;
use crate::prepare::listing::RowError;

/// File extensions (lower case) of the formats above; listings match them in any case.
pub const EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "gif"];

/// The widest or tallest image accepted, in pixels.
pub const MAX_SIDE: u32 = 1 << 14;

/// The largest decoded pixel buffer accepted (in the decoder's own colour type).
pub const MAX_DECODED_BYTES: u64 = 512 << 20;

/// The largest image file read.
pub const MAX_FILE_BYTES: u64 = 512 << 20;

const MIB: u64 = 1 << 20;

const TOO_LARGE_HINT: &str = "a decompression bomb, or a picture to downscale before use";

/// Whether `path` has one of [`EXTENSIONS`], in any letter case.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The extensions for messages: `.jpg, .jpeg, ...`.
pub fn extension_list() -> String {
    EXTENSIONS.map(|e| format!(".{e}")).join(", ")
}

/// Reads and decodes the image file at `path` to upright RGB. The error is the manifest's skip
/// reason with a detail: a missing or unreadable file names `path`, a decoding failure does not
/// (the manifest lists the path beside it).
pub fn read_rgb(path: &Path) -> Result<RgbImage, RowError> {
    let io = |e: std::io::Error| {
        let reason = if e.kind() == std::io::ErrorKind::NotFound {
            SkipReason::MissingFile
        } else {
            SkipReason::UnreadableFile
        };
        (reason, format!("{}: {e}", path.display()))
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let too_big = |len: u64| {
        (
            SkipReason::ImageTooLarge,
            format!(
                "file of {} MiB is over the {} MiB limit: {TOO_LARGE_HINT}",
                len.div_ceil(MIB),
                MAX_FILE_BYTES / MIB
            ),
        )
    };
    if len > MAX_FILE_BYTES {
        return Err(too_big(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The file may grow between the size check and the read.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    decode_rgb(&bytes)
}

/// Decodes an image held in memory to upright RGB (grey is expanded, alpha dropped).
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, RowError> {
    let undecodable = |detail: String| (SkipReason::UndecodableImage, detail);
    if is_truncated_jpeg(bytes) {
        return Err(undecodable(
            "JPEG ends before its end-of-image marker (truncated file)".into(),
        ));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| undecodable(e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err(undecodable(format!(
            "unrecognised content: not a JPEG, PNG, BMP, TIFF, WebP or GIF image \
             (extensions {})",
            extension_list()
        )));
    };
    reader.limits(limits());
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let (w, h) = decoder.dimensions();
    let need = decoder.total_bytes();
    if need > MAX_DECODED_BYTES {
        return Err((
            SkipReason::ImageTooLarge,
            format!(
                "{w}x{h} {:?} image needs {} MiB decoded, over the {} MiB limit: \
                 {TOO_LARGE_HINT}",
                decoder.color_type(),
                need.div_ceil(MIB),
                MAX_DECODED_BYTES / MIB
            ),
        ));
    }
    // What is left of the allocation limit bounds the decoder's own buffers, as
    // `ImageReader::decode` does.
    let mut rest = limits();
    rest.reserve(need).map_err(classify)?;
    decoder.set_limits(rest).map_err(classify)?;
    let orientation = if format == ImageFormat::Jpeg && !jpeg_has_exif(bytes) {
        Orientation::NoTransforms
    } else {
        decoder.orientation().map_err(classify)?
    };
    let img = DynamicImage::from_decoder(decoder).map_err(classify)?;
    // Converted before rotating: a rotation then moves 3 bytes a pixel, not 4 or 8.
    let mut rgb = DynamicImage::ImageRgb8(img.into_rgb8());
    rgb.apply_orientation(orientation);
    Ok(rgb.into_rgb8())
}

fn limits() -> Limits {
    let mut l = Limits::default();
    l.max_image_width = Some(MAX_SIDE);
    l.max_image_height = Some(MAX_SIDE);
    l.max_alloc = Some(MAX_DECODED_BYTES);
    l
}

fn classify(e: ImageError) -> RowError {
    match e {
        ImageError::Limits(e) => (
            SkipReason::ImageTooLarge,
            format!(
                "over the decoding limits of {MAX_SIDE} pixels a side and {} MiB decoded \
                 ({e}): {TOO_LARGE_HINT}",
                MAX_DECODED_BYTES / MIB
            ),
        ),
        e => (SkipReason::UndecodableImage, e.to_string()),
    }
}

/// The JPEG decoder fills a cut-off scan with grey instead of failing, so a truncated file
/// would become a half-grey training image. Entropy-coded data cannot contain `FF D9` (a data
/// `FF` is always followed by `00` or a restart marker), so a complete file has an end-of-image
/// marker after its last start-of-scan.
fn is_truncated_jpeg(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(p) => !bytes[p..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => true,
    }
}

/// Whether a JPEG's header segments (those before the first scan) include an EXIF block. The
/// decoder reads the orientation by parsing the whole header again, Huffman tables included:
/// 7 to 10 us a file, 7% of decoding a 96-pixel face, which the JPEGs without EXIF (most of a
/// face dataset's) need not pay. A header this walk cannot follow is left to the decoder.
fn jpeg_has_exif(bytes: &[u8]) -> bool {
    let mut i = 2;
    while let Some(&[0xFF, marker, hi, lo, ..]) = bytes.get(i..) {
        match marker {
            // Fill bytes before a marker.
            0xFF => {
                i += 1;
                continue;
            }
            0xDA | 0xD9 => return false,
            0xE1 if bytes.get(i + 4..i + 10) == Some(b"Exif\0\0") => return true,
            _ => i += 2 + usize::from(u16::from_be_bytes([hi, lo])),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_match_in_any_case() {
        for name in [
            "a.JPG", "a.Jpeg", "b.png", "c.BMP", "d.tif", "e.TIFF", "f.WebP", "g.gif",
        ] {
            assert!(has_image_extension(Path::new(name)), "{name}");
        }
        for name in ["a.txt", "b", "c.png.bak", "d.jpe", ".png"] {
            assert!(!has_image_extension(Path::new(name)), "{name}");
        }
    }

    /// A JPEG's segments from a list of (marker, payload), then a scan.
    fn jpeg(segments: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = vec![0xFF, 0xD8];
        for (marker, payload) in segments {
            out.extend([0xFF, *marker]);
            out.extend(((payload.len() + 2) as u16).to_be_bytes());
            out.extend(*payload);
        }
        out.extend([0xFF, 0xDA, 0, 2, 0x12, 0x34, 0xFF, 0xD9]);
        out
    }

    #[test]
    fn the_exif_walk_finds_exif_before_the_scan_only() {
        let jfif: &[u8] = b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0";
        let exif: &[u8] = b"Exif\0\0MM\0\x2a";
        assert!(jpeg_has_exif(&jpeg(&[(0xE1, exif)])));
        assert!(jpeg_has_exif(&jpeg(&[(0xE0, jfif), (0xE1, exif)])));
        assert!(!jpeg_has_exif(&jpeg(&[(0xE0, jfif), (0xDB, &[0; 65])])));
        // XMP also lives in APP1, under another name.
        assert!(!jpeg_has_exif(&jpeg(&[(
            0xE1,
            b"http://ns.adobe.com/xap/1.0/\0"
        )])));
        // Fill bytes before a marker are allowed.
        let mut filled = jpeg(&[(0xE1, exif)]);
        filled.splice(2..2, [0xFF, 0xFF]);
        assert!(jpeg_has_exif(&filled));
        // A header it cannot follow goes to the decoder.
        assert!(jpeg_has_exif(&[0xFF, 0xD8, 0x12, 0x34]));
        // A real encoder's file, which carries no EXIF.
        let mut enc = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut enc)
            .encode(&[128; 8 * 8 * 3], 8, 8, image::ExtendedColorType::Rgb8)
            .unwrap();
        assert!(!jpeg_has_exif(&enc));
    }
}
