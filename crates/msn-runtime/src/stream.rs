//! Images arriving one after another on a byte stream, as a camera pipeline or
//! `ffmpeg -f image2pipe` writes them: concatenated PNG and JPEG files (MJPEG is JPEG frames
//! back to back), or raw RGB24 frames of a size given beforehand (`ffmpeg -f rawvideo
//! -pix_fmt rgb24`).
//!
//! [`Frames`] splits the stream by the files' own structure (PNG chunks up to `IEND`, JPEG
//! segments and entropy-coded data up to `EOI`), so a frame is handed on as soon as its last
//! byte arrives, without waiting for the next one. Memory stays flat: one read buffer and the
//! frame being read, never more than [`MAX_FRAME_BYTES`]. Bytes that are no frame (garbage
//! between frames, a frame cut short or too large) come out as [`Item::Skipped`] and the
//! reader looks for the next PNG or JPEG signature, from the broken frame's second byte on (a
//! frame cut short may have read into the next one): a broken frame costs that frame only.

use std::io::{self, Read};

/// The largest frame read from a stream; larger ones are skipped.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
const JPEG_SIGNATURE: [u8; 3] = [0xFF, 0xD8, 0xFF];
const CHUNK: usize = 64 << 10;

/// What the stream held next.
#[derive(Debug, PartialEq)]
pub enum Item {
    /// One whole encoded image (or, for [`RawFrames`], one frame's pixels).
    Frame(Vec<u8>),
    /// Bytes that were not a frame, and why.
    Skipped { bytes: u64, reason: String },
}

/// A read buffer with look-ahead over any reader.
struct Input<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
}

impl<R: Read> Input<R> {
    fn new(r: R) -> Self {
        Input {
            r,
            buf: Vec::with_capacity(2 * CHUNK),
            start: 0,
            eof: false,
        }
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Reads until `n` bytes are buffered or the input ends; true when they are.
    fn fill(&mut self, n: usize) -> io::Result<bool> {
        while self.available().len() < n && !self.eof {
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let old = self.buf.len();
            self.buf.resize(old + CHUNK.max(n - (old - self.start)), 0);
            let got = loop {
                match self.r.read(&mut self.buf[old..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let got = match got {
                Ok(g) => g,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            };
            self.buf.truncate(old + got);
            self.eof = got == 0;
        }
        Ok(self.available().len() >= n)
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Puts `bytes` back in front of what is still to be read.
    fn unread(&mut self, bytes: &[u8]) {
        self.buf
            .splice(self.start..self.start, bytes.iter().copied());
    }

    /// Moves `n` bytes to `out` (or drops them when `out` is `None`); false if the input ended
    /// first.
    fn copy(&mut self, mut n: usize, mut out: Option<&mut Vec<u8>>) -> io::Result<bool> {
        while n > 0 {
            if !self.fill(1)? {
                return Ok(false);
            }
            let k = n.min(self.available().len());
            if let Some(o) = out.as_deref_mut() {
                o.extend_from_slice(&self.available()[..k]);
            }
            self.consume(k);
            n -= k;
        }
        Ok(true)
    }
}

/// Concatenated PNG and JPEG images from a byte stream; an iterator of [`Item`]s that ends
/// with the input.
pub struct Frames<R> {
    input: Input<R>,
    max: usize,
}

/// How a frame read ended.
enum End {
    Whole,
    /// The input ended inside the frame.
    Cut,
    /// The bytes broke the format's structure.
    Broken(String),
}

impl<R: Read> Frames<R> {
    pub fn new(r: R) -> Self {
        Self::with_limit(r, MAX_FRAME_BYTES)
    }

    /// Frames of at most `max` bytes.
    pub fn with_limit(r: R, max: usize) -> Self {
        Frames {
            input: Input::new(r),
            max,
        }
    }

    /// Skips to the next PNG or JPEG signature; the bytes skipped.
    fn seek_signature(&mut self) -> io::Result<u64> {
        let mut skipped = 0u64;
        loop {
            self.input.fill(PNG_SIGNATURE.len())?;
            let a = self.input.available();
            if a.is_empty() {
                return Ok(skipped);
            }
            // A signature, or the start of one cut by the end of what is buffered.
            let could_be = |rest: &[u8], sig: &[u8]| {
                let n = rest.len().min(sig.len());
                rest[..n] == sig[..n]
            };
            let found = (0..a.len())
                .find(|&i| could_be(&a[i..], &PNG_SIGNATURE) || could_be(&a[i..], &JPEG_SIGNATURE));
            let whole = |i: usize| {
                a[i..].starts_with(&PNG_SIGNATURE) || a[i..].starts_with(&JPEG_SIGNATURE)
            };
            match found {
                Some(i) if whole(i) => {
                    self.input.consume(i);
                    return Ok(skipped + i as u64);
                }
                // Cut by the buffer's end: more is read from there on the next turn.
                Some(i) if !self.input.eof => {
                    self.input.consume(i);
                    skipped += i as u64;
                }
                _ => {
                    let n = a.len();
                    self.input.consume(n);
                    skipped += n as u64;
                }
            }
        }
    }

    /// `Broken` when `more` bytes would take the frame past the limit.
    fn too_large(&self, out: &[u8], more: usize) -> Option<End> {
        (out.len().saturating_add(more) > self.max)
            .then(|| End::Broken(format!("the frame is larger than {} bytes", self.max)))
    }

    fn png(&mut self, out: &mut Vec<u8>) -> io::Result<End> {
        self.input.copy(PNG_SIGNATURE.len(), Some(out))?;
        loop {
            if !self.input.fill(8)? {
                return Ok(End::Cut);
            }
            let a = self.input.available();
            let len = u32::from_be_bytes([a[0], a[1], a[2], a[3]]) as usize;
            let kind = [a[4], a[5], a[6], a[7]];
            if !kind.iter().all(u8::is_ascii_alphabetic) || len > i32::MAX as usize {
                return Ok(End::Broken("a PNG chunk header is corrupt".into()));
            }
            let total = len + 12;
            if let Some(end) = self.too_large(out, total) {
                return Ok(end);
            }
            if !self.input.copy(total, Some(out))? {
                return Ok(End::Cut);
            }
            if &kind == b"IEND" {
                return Ok(End::Whole);
            }
        }
    }

    fn jpeg(&mut self, out: &mut Vec<u8>) -> io::Result<End> {
        self.input.copy(2, Some(out))?; // SOI
        loop {
            if !self.input.fill(2)? {
                return Ok(End::Cut);
            }
            let a = self.input.available();
            if a[0] != 0xFF {
                return Ok(End::Broken("a JPEG marker is missing".into()));
            }
            let marker = a[1];
            if marker == 0xFF {
                self.input.copy(1, Some(out))?; // a fill byte before a marker
                continue;
            }
            self.input.copy(2, Some(out))?;
            match marker {
                0xD9 => return Ok(End::Whole),  // EOI
                0x01 | 0xD0..=0xD7 => continue, // no length
                0x00 => return Ok(End::Broken("a JPEG marker is corrupt".into())),
                _ => {}
            }
            if !self.input.fill(2)? {
                return Ok(End::Cut);
            }
            let a = self.input.available();
            let len = u16::from_be_bytes([a[0], a[1]]) as usize;
            if len < 2 {
                return Ok(End::Broken("a JPEG segment length is corrupt".into()));
            }
            if let Some(end) = self.too_large(out, len) {
                return Ok(end);
            }
            if !self.input.copy(len, Some(out))? {
                return Ok(End::Cut);
            }
            if marker == 0xDA {
                // Entropy-coded data: up to the next marker that is not a stuffed 0xFF00 or a
                // restart marker.
                loop {
                    if !self.input.fill(2)? {
                        return Ok(End::Cut);
                    }
                    let a = self.input.available();
                    let stop = a.windows(2).position(|w| {
                        w[0] == 0xFF && w[1] != 0x00 && !(0xD0..=0xD7).contains(&w[1])
                    });
                    // Keep the last byte when it is 0xFF: its pair is not read yet.
                    let n = stop.unwrap_or(a.len() - usize::from(a[a.len() - 1] == 0xFF));
                    if let Some(end) = self.too_large(out, n) {
                        return Ok(end);
                    }
                    self.input.copy(n, Some(out))?;
                    if stop.is_some() {
                        break;
                    }
                }
            }
        }
    }
}

impl<R: Read> Iterator for Frames<R> {
    type Item = io::Result<Item>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut step = || -> io::Result<Option<Item>> {
            let skipped = self.seek_signature()?;
            if skipped > 0 {
                return Ok(Some(Item::Skipped {
                    bytes: skipped,
                    reason: "bytes that are not a PNG or JPEG image".into(),
                }));
            }
            if self.input.available().is_empty() {
                return Ok(None);
            }
            let mut out = Vec::new();
            let end = if self.input.available().starts_with(&PNG_SIGNATURE) {
                self.png(&mut out)?
            } else {
                self.jpeg(&mut out)?
            };
            let reason = match end {
                End::Whole => return Ok(Some(Item::Frame(out))),
                End::Cut => "the stream ended inside an image".to_string(),
                End::Broken(reason) => reason,
            };
            // A frame cut short may have read into the next one: look for it again from the
            // broken frame's second byte on.
            if let Some(k) = (1..out.len()).find(|&k| {
                out[k..].starts_with(&JPEG_SIGNATURE) || out[k..].starts_with(&PNG_SIGNATURE)
            }) {
                self.input.unread(&out[k..]);
                out.truncate(k);
            }
            Ok(Some(Item::Skipped {
                bytes: out.len() as u64,
                reason,
            }))
        };
        step().transpose()
    }
}

/// Raw frames of `frame_bytes` each (RGB24: width x height x 3), back to back.
pub struct RawFrames<R> {
    r: R,
    frame_bytes: usize,
}

impl<R: Read> RawFrames<R> {
    pub fn new(r: R, frame_bytes: usize) -> Self {
        RawFrames { r, frame_bytes }
    }
}

impl<R: Read> Iterator for RawFrames<R> {
    type Item = io::Result<Item>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut frame = Vec::with_capacity(self.frame_bytes);
        match (&mut self.r)
            .take(self.frame_bytes as u64)
            .read_to_end(&mut frame)
        {
            Err(e) => Some(Err(e)),
            Ok(0) => None,
            Ok(n) if n < self.frame_bytes => Some(Ok(Item::Skipped {
                bytes: n as u64,
                reason: format!(
                    "the stream ended inside a frame ({n} of {} bytes)",
                    self.frame_bytes
                ),
            })),
            Ok(_) => Some(Ok(Item::Frame(frame))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(seed: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(5, 3, |x, y| image::Rgb([seed, x as u8, y as u8]));
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    fn jpeg(seed: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(40, 24, |x, y| {
            image::Rgb([seed, (x * 6) as u8, (y * 10) as u8])
        });
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut io::Cursor::new(&mut out), image::ImageFormat::Jpeg)
            .unwrap();
        out
    }

    /// Hands out its bytes `step` at a time, as a pipe does.
    struct Trickle(Vec<u8>, usize, usize);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.2).min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    fn items(bytes: Vec<u8>, step: usize) -> Vec<Item> {
        Frames::new(Trickle(bytes, 0, step))
            .collect::<io::Result<_>>()
            .unwrap()
    }

    #[test]
    fn concatenated_pngs_and_jpegs_come_out_whole_at_any_read_size() {
        let frames = [png(1), jpeg(2), jpeg(3), png(4)];
        for step in [1, 7, 4096, 1 << 20] {
            let got = items(frames.concat(), step);
            let want: Vec<Item> = frames.iter().cloned().map(Item::Frame).collect();
            assert_eq!(got, want, "reads of {step} bytes");
        }
    }

    #[test]
    fn garbage_and_cut_frames_are_skipped_and_the_stream_goes_on() {
        let (a, b, c) = (jpeg(1), png(2), jpeg(3));
        // Cut in the middle of its data: reading on takes the next image's first bytes.
        let cut = &b[..b.len() / 2];
        let bytes = [&b"garbage"[..], &a, cut, &c, &[0xFF, 0xD8, 0xFF, 0xE0][..]].concat();
        let got = items(bytes, 5);
        // Garbage, a, the cut PNG (which read into c: c is found again), c, the cut JPEG.
        assert_eq!(got.len(), 5, "{got:?}");
        assert!(matches!(&got[0], Item::Skipped { bytes: 7, .. }));
        assert_eq!(got[1], Item::Frame(a));
        assert!(
            matches!(&got[2], Item::Skipped { bytes, .. } if *bytes == cut.len() as u64),
            "{:?}",
            got[2]
        );
        assert_eq!(got[3], Item::Frame(c));
        assert!(matches!(
            got.last().unwrap(),
            Item::Skipped { reason, .. } if reason.contains("ended inside")
        ));
    }

    #[test]
    fn a_frame_over_the_limit_is_skipped() {
        // Noise: a PNG larger than the small JPEG.
        let noise = image::RgbImage::from_fn(64, 64, |x, y| {
            let v = (x * 7919 + y * 104729) ^ (x * y * 31);
            image::Rgb([v as u8, (v >> 8) as u8, (v >> 3) as u8])
        });
        let mut big = Vec::new();
        image::DynamicImage::ImageRgb8(noise)
            .write_to(&mut io::Cursor::new(&mut big), image::ImageFormat::Png)
            .unwrap();
        let limit = jpeg(1).len() + 10;
        assert!(big.len() > limit);
        let bytes = [big.clone(), jpeg(1)].concat();
        let got: Vec<Item> = Frames::with_limit(&bytes[..], limit)
            .collect::<io::Result<_>>()
            .unwrap();
        assert!(
            matches!(&got[0], Item::Skipped { reason, .. } if reason.contains("larger than")),
            "{got:?}"
        );
        assert_eq!(got.last(), Some(&Item::Frame(jpeg(1))));
    }

    #[test]
    fn raw_frames_are_cut_by_size() {
        let bytes: Vec<u8> = (0..25u8).collect();
        let got: Vec<Item> = RawFrames::new(&bytes[..], 12)
            .collect::<io::Result<_>>()
            .unwrap();
        assert_eq!(got[0], Item::Frame((0..12).collect()));
        assert_eq!(got[1], Item::Frame((12..24).collect()));
        assert!(matches!(&got[2], Item::Skipped { bytes: 1, .. }));
        assert_eq!(got.len(), 3);
    }
}
