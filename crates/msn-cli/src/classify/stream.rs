//! `msn-classify -`: images from standard input as they arrive. The model loads once; each
//! frame's answer is printed and flushed as soon as it is known; a broken frame is reported
//! and skipped; the end of the input ends the run.

use super::{load, top_of, ClassifyArgs};
use anyhow::Result;
use msn_runtime::stream::{Frames, Item, RawFrames};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Counts and latencies of one stream, for the closing summary.
#[derive(Default)]
struct Tally {
    frames: u64,
    classified: u64,
    dropped: u64,
    broken: u64,
    first_answer: Option<Duration>,
    /// The latest [`KEPT`] latencies (memory stays flat on an endless stream).
    latencies_ms: std::collections::VecDeque<f32>,
}

const KEPT: usize = 10_000;

pub(super) fn run(args: &ClassifyArgs) -> Result<()> {
    let start = Instant::now();
    let clf = load(args, 1)?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let stdin = std::io::stdin().lock();
    let items: Box<dyn Iterator<Item = std::io::Result<Item>>> = match args.raw {
        Some((w, h)) => Box::new(RawFrames::new(stdin, w as usize * h as usize * 3)),
        None => Box::new(Frames::new(stdin)),
    };
    let min_gap = args.max_fps.map(|f| Duration::from_secs_f64(1.0 / f));
    let mut last: Option<Instant> = None;
    let mut tally = Tally::default();
    let mut out = std::io::stdout().lock();
    let name = Path::new("-");
    for item in items {
        let item = item.map_err(|e| anyhow::anyhow!("standard input: {e}"))?;
        let index = tally.frames;
        let frame = match item {
            Item::Frame(bytes) => {
                tally.frames += 1;
                bytes
            }
            Item::Skipped { bytes, reason } => {
                tally.frames += 1;
                tally.broken += 1;
                report(
                    &mut out,
                    args.json,
                    index,
                    &format!("{reason} ({bytes} bytes)"),
                )?;
                continue;
            }
        };
        let arrived = Instant::now();
        let too_soon = min_gap.zip(last).is_some_and(|(gap, t)| arrived - t < gap);
        if index % args.every as u64 != 0 || too_soon {
            tally.dropped += 1;
            continue;
        }
        last = Some(arrived);
        let image = match args.raw {
            Some((w, h)) => image::RgbImage::from_raw(w, h, frame)
                .map(image::DynamicImage::ImageRgb8)
                .ok_or_else(|| "a raw frame of the wrong size".to_string()),
            None => msn_runtime::preprocess::decode_bytes(&frame, name).map_err(|e| e.to_string()),
        };
        let image = match image {
            Ok(i) => i,
            Err(e) => {
                tally.broken += 1;
                report(&mut out, args.json, index, &e)?;
                continue;
            }
        };
        let logits = clf.run_one(&clf.preprocess().apply(&image))?;
        let top = top_of(&clf, &logits, args.top_k);
        let ms = arrived.elapsed().as_secs_f32() * 1e3;
        tally.first_answer.get_or_insert(start.elapsed());
        if tally.latencies_ms.len() == KEPT {
            tally.latencies_ms.pop_front();
        }
        tally.latencies_ms.push_back(ms);
        tally.classified += 1;
        let line = if args.json {
            json!({"frame": index, "top": top, "latency_ms": ms}).to_string()
        } else {
            let labels: Vec<String> = top
                .iter()
                .map(|t| format!("{:.2}% {} ({})", t.prob * 100.0, t.label, t.index))
                .collect();
            format!("frame {index}: {} [{ms:.1} ms]", labels.join(", "))
        };
        if !emit(&mut out, &line)? {
            break; // the reader went away
        }
    }
    let mut lat: Vec<f32> = tally.latencies_ms.iter().copied().collect();
    lat.sort_by(f32::total_cmp);
    let timing = match (tally.first_answer, lat.get(lat.len() / 2)) {
        (Some(first), Some(median)) => format!(
            "first answer after {:.0} ms, median {median:.1} ms a frame (decode to answer)",
            first.as_secs_f64() * 1e3
        ),
        _ => "no frame classified".to_string(),
    };
    eprintln!(
        "stream: {} frames, {} classified, {} dropped, {} broken; model loaded in {load_ms:.0} ms, \
         {timing}",
        tally.frames, tally.classified, tally.dropped, tally.broken,
    );
    Ok(())
}

/// A broken frame: one line on stderr, and with --json an object on stdout too, so a reader
/// that counts frames stays in step.
fn report(out: &mut impl Write, json: bool, index: u64, reason: &str) -> Result<()> {
    eprintln!("error: -: frame {index}: {reason}");
    if json {
        emit(out, &json!({"frame": index, "error": reason}).to_string())?;
    }
    Ok(())
}

/// Writes one line and flushes it; false when the reader has closed the pipe.
fn emit(out: &mut impl Write, line: &str) -> Result<bool> {
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow::anyhow!("standard output: {e}")),
    }
}
