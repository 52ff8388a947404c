//! The inputs users have, as they have them: class folders to evaluate on, images streamed on
//! standard input (concatenated PNG/JPEG, MJPEG, raw RGB), compressed `.npz` files, and models
//! whose weights sit in a data file beside them.

mod common;

use common::{assert_fails_with, ok, s};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn classify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msn-classify"))
        .args(args)
        .output()
        .expect("msn-classify runs")
}

/// `msn-classify args -` with `stdin` written to it in one go.
fn classify_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_msn-classify"))
        .args(args)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&bytes);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// The ten Fashion-MNIST test images shipped in `models/images`, named `NNNN-class.png`.
fn shipped_images() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("models/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The built-in model's top-1 class of each file, one process per file (the plain path).
fn top1_each(files: &[PathBuf]) -> Vec<usize> {
    files
        .iter()
        .map(|f| {
            let out = ok(&classify(&["--json", "--top-k", "1", s(f)]));
            let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            v["top"][0]["index"].as_u64().unwrap() as usize
        })
        .collect()
}

fn encode(path: &Path, format: image::ImageFormat) -> Vec<u8> {
    let img = image::open(path).unwrap().to_rgb8();
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), format)
        .unwrap();
    out
}

#[test]
fn folders_are_walked_into_subfolders() {
    let dir = tempfile::tempdir().unwrap();
    let images = shipped_images();
    for (i, f) in images.iter().enumerate() {
        let sub = dir.path().join(format!("day{}/cam{}", i % 2, i % 3));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::copy(f, sub.join(f.file_name().unwrap())).unwrap();
    }
    let out = ok(&classify(&["--json", "--top-k", "1", s(dir.path())]));
    assert_eq!(out.lines().count(), images.len(), "{out}");
}

/// Class folders named by label (and, for `T-shirt/top`, which no folder can be named, by
/// index), with images the model gets wrong as well as right.
#[test]
fn evaluate_counts_each_class_folder_and_agrees_with_per_image_answers() {
    let dir = tempfile::tempdir().unwrap();
    // The built-in model's own class names.
    let model = msn_onnx::io::load(root().join("models/fashion-cnn3-msn.folded.onnx")).unwrap();
    let labels = msn_onnx::meta::ImageMeta::from_model(&model)
        .unwrap()
        .labels
        .unwrap();
    let images = shipped_images();
    // Each image in its true class folder, and a second copy one class off (wrong on purpose).
    let mut truth = Vec::new();
    let mut files = Vec::new();
    for f in &images {
        let name = f.file_name().unwrap().to_str().unwrap();
        let class = labels
            .iter()
            .position(|l| {
                let l = l.to_lowercase().replace(' ', "-");
                name[5..].trim_end_matches(".png") == l
                    || (l == "t-shirt/top" && name.contains("t-shirt"))
            })
            .unwrap();
        for (c, copy) in [(class, "a"), ((class + 1) % 10, "b")] {
            let folder = if c == 0 {
                "0".to_string()
            } else {
                labels[c].to_string()
            };
            let d = dir.path().join(folder);
            std::fs::create_dir_all(&d).unwrap();
            let p = d.join(format!("{copy}-{name}"));
            std::fs::copy(f, &p).unwrap();
            truth.push(c);
            files.push(p);
        }
    }
    let predicted = top1_each(&files);
    let correct = truth.iter().zip(&predicted).filter(|(t, p)| t == p).count();
    assert!(correct >= 8 && correct < files.len(), "{correct}");

    let out = ok(&classify(&["--evaluate", "--json", s(dir.path())]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["images"], 20);
    assert_eq!(v["correct"].as_u64().unwrap() as usize, correct);
    let confusion = v["confusion"].as_array().unwrap();
    assert_eq!(confusion.len(), 10);
    for (t, p) in truth.iter().zip(&predicted) {
        let n = confusion[*t][*p].as_u64().unwrap() as usize;
        let want = truth
            .iter()
            .zip(&predicted)
            .filter(|(a, b)| (*a, *b) == (t, p))
            .count();
        assert_eq!(n, want, "cell ({t}, {p})");
    }
    assert_eq!(v["per_class"].as_array().unwrap().len(), 10);

    let text = ok(&classify(&["--evaluate", s(dir.path())]));
    assert!(
        text.contains(&format!(
            "accuracy {:.4} ({correct} of 20 images)",
            correct as f64 / 20.0
        )),
        "{text}"
    );
    assert!(text.contains("confusion matrix"), "{text}");
    // A folder that names no class is refused with the names it expected.
    std::fs::create_dir_all(dir.path().join("Hat")).unwrap();
    assert_fails_with(
        &classify(&["--evaluate", s(dir.path())]),
        "'Hat' name no class of the model",
    );
}

#[test]
fn a_stream_of_png_and_jpeg_frames_gives_a_line_per_frame_and_skips_broken_ones() {
    let images = shipped_images();
    let want = top1_each(&images[..4]);
    let mut stream = Vec::new();
    for (i, f) in images[..4].iter().enumerate() {
        let format = if i % 2 == 0 {
            image::ImageFormat::Png
        } else {
            image::ImageFormat::Jpeg
        };
        let bytes = encode(f, format);
        if i == 2 {
            // A frame whose pixels are corrupt but whose structure is whole.
            let mut bad = bytes.clone();
            let n = bad.len();
            bad[n / 2..n - 20].fill(0xAB);
            stream.extend(bad);
        }
        stream.extend(bytes);
    }
    stream.extend(b"trailing garbage");
    let out = classify_stdin(&["--json", "--top-k", "1"], &stream);
    let stdout = ok(&out);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let answers: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l.get("top").is_some()).collect();
    assert_eq!(answers.len(), 4, "{stdout}");
    for (a, w) in answers.iter().zip(&want) {
        assert_eq!(a["top"][0]["index"].as_u64().unwrap() as usize, *w, "{a}");
        assert!(a["latency_ms"].as_f64().unwrap() > 0.0);
    }
    let frames: Vec<u64> = answers
        .iter()
        .map(|a| a["frame"].as_u64().unwrap())
        .collect();
    assert_eq!(frames, [0, 1, 3, 4]);
    let errors: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l.get("error").is_some()).collect();
    assert_eq!(errors.len(), 2, "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("frame 2") && stderr.contains("6 frames, 4 classified"),
        "{stderr}"
    );
}

#[test]
fn each_answer_is_flushed_before_the_next_frame_arrives() {
    let image = encode(&shipped_images()[0], image::ImageFormat::Jpeg);
    let mut child = Command::new(env!("CARGO_BIN_EXE_msn-classify"))
        .args(["--top-k", "1", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    for i in 0..3 {
        stdin.write_all(&image).unwrap();
        stdin.flush().unwrap();
        // The pipe stays open: the answer must come without more input or an end of input.
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no answer to frame {i} while the stream is open"));
        assert!(
            line.starts_with(&format!("frame {i}: ")) && line.contains("Ankle boot"),
            "{line}"
        );
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn raw_frames_every_nth_and_their_errors() {
    let images = shipped_images();
    let want = top1_each(&images[..3]);
    let mut stream = Vec::new();
    for f in &images[..3] {
        stream.extend(image::open(f).unwrap().to_rgb8().into_raw()); // 28x28 RGB
    }
    let out = ok(&classify_stdin(
        &["--json", "--top-k", "1", "--raw", "28x28"],
        &stream,
    ));
    let got: Vec<usize> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["top"][0]["index"]
                .as_u64()
                .unwrap() as usize
        })
        .collect();
    assert_eq!(got, want);

    // Every second frame, and a cut last frame reported.
    stream.extend([0u8; 100]);
    let out = classify_stdin(&["--top-k", "1", "--raw", "28x28", "--every", "2"], &stream);
    let stdout = ok(&out);
    let frames: Vec<&str> = stdout
        .lines()
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(frames, ["frame 0", "frame 2"]);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("frame 3: the stream ended inside a frame (100 of 2352 bytes)"));

    // At most one frame in 1,000 s: the frames after the first arrive sooner and are dropped.
    let out = classify_stdin(
        &["--top-k", "1", "--raw", "28x28", "--max-fps", "0.001"],
        &stream,
    );
    assert_eq!(ok(&out).lines().count(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 classified, 2 dropped, 1 broken"));

    for (args, needle) in [
        (vec!["--raw", "0x5", "-"], "not a side"),
        (vec!["--raw", "28", "-"], "not WxH"),
        (vec!["--every", "0", "-"], "at least 1"),
        (vec!["--max-fps=0", "-"], "positive"),
        (vec!["--raw", "28x28", "x.png"], "apply to `-`"),
        (vec!["-", "x.png"], "the only input"),
    ] {
        assert_fails_with(&classify(&args), needle);
    }
}

/// An `.npz` archive written with deflate, as `np.savez_compressed` writes it.
fn savez_compressed(path: &Path, name: &str, array: &ndarray::ArrayD<f32>) {
    let tmp = path.with_extension("tmp.npy");
    let t = msn_runtime::Tensor::from(array.clone());
    msn_runtime::npy::write(&tmp, &[("x".into(), t)]).unwrap();
    let npy = std::fs::read(&tmp).unwrap();
    std::fs::remove_file(&tmp).unwrap();
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    zip.start_file(format!("{name}.npy"), options).unwrap();
    zip.write_all(&npy).unwrap();
    zip.finish().unwrap();
}

fn foreign_model() -> PathBuf {
    root().join("tests/fixtures/foreign/torch_cnn.onnx")
}

fn msn(args: &[&str]) -> Output {
    common::msn(args)
}

#[test]
fn compressed_npz_runs_and_an_entry_larger_than_the_input_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let source = msn_runtime::Source::read(foreign_model()).unwrap();
    let spec = &source.inputs()[0];
    let mut dims: Vec<usize> = spec
        .dims
        .clone()
        .unwrap()
        .iter()
        .map(|d| d.unwrap_or(1))
        .collect();
    dims[0] = 1;
    let n: usize = dims.iter().product();
    let x = ndarray::ArrayD::from_shape_fn(dims.clone(), |i| {
        (ndarray::Dimension::slice(&i).iter().sum::<usize>() % 7) as f32 * 0.1
    });
    let stored = dir.path().join("x.npy");
    msn_runtime::npy::write(
        &stored,
        &[("x".into(), msn_runtime::Tensor::from(x.clone()))],
    )
    .unwrap();
    let compressed = dir.path().join("x.npz");
    savez_compressed(&compressed, &spec.name, &x);
    let (a, b) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
    ok(&msn(&[
        "run",
        s(&foreign_model()),
        "-i",
        s(&stored),
        "-o",
        s(&a),
    ]));
    ok(&msn(&[
        "run",
        s(&foreign_model()),
        "-i",
        s(&compressed),
        "-o",
        s(&b),
    ]));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // 256 MiB of zeros: a deflate bomb, refused from its header whatever the input. The model's
    // batch is free, so the size alone could be a batch; the ratio gives it away.
    let bomb = dir.path().join("bomb.npz");
    savez_compressed(&bomb, &spec.name, &ndarray::ArrayD::zeros(vec![64 << 20]));
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
    let start = std::time::Instant::now();
    let out = msn(&["run", s(&foreign_model()), "-i", s(&bomb), "-o", s(&a)]);
    assert_fails_with(&out, "bomb.npz");
    assert_fails_with(&out, "times its compressed size");
    assert!(start.elapsed() < Duration::from_secs(10));
    // With the batch fixed, an entry of more than the input takes is refused by size.
    let fixed = dir.path().join("fixed.onnx");
    ok(&msn(&[
        "fold",
        s(&foreign_model()),
        "-o",
        s(&fixed),
        "--input-shape",
        &dims
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(","),
    ]));
    let big = dir.path().join("big.npz");
    savez_compressed(
        &big,
        &spec.name,
        &ndarray::ArrayD::from_elem(vec![3 * n], 0.5),
    );
    let out = msn(&["run", s(&fixed), "-i", s(&big), "-o", s(&a)]);
    assert_fails_with(&out, &format!("takes more than {} bytes", n * 8));
}

#[test]
fn a_model_with_its_weights_in_a_data_file_beside_it_runs_as_the_inline_one() {
    use msn_onnx::proto::tensor_proto::DataLocation;
    use msn_onnx::proto::StringStringEntryProto;
    let dir = tempfile::tempdir().unwrap();
    let mut model = msn_onnx::io::load(foreign_model()).unwrap();
    let mut data = Vec::new();
    let mut moved = 0;
    for t in &mut model.graph.as_mut().unwrap().initializer {
        if t.raw_data.as_ref().is_none_or(|r| r.len() < 64) {
            continue;
        }
        let raw = t.raw_data.take().unwrap();
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        t.external_data = vec![
            entry("location", "weights.bin".into()),
            entry("offset", data.len().to_string()),
            entry("length", raw.len().to_string()),
        ];
        t.data_location = Some(DataLocation::External as i32);
        data.extend(raw);
        moved += 1;
    }
    assert!(moved > 0);
    std::fs::write(dir.path().join("weights.bin"), &data).unwrap();
    let external = dir.path().join("model.onnx");
    msn_onnx::io::save(&model, &external).unwrap();
    assert!(std::fs::metadata(&external).unwrap().len() < data.len() as u64);

    let image = shipped_images()[0].clone();
    let a = ok(&classify(&[
        "--model",
        s(&foreign_model()),
        "--json",
        s(&image),
    ]));
    let b = ok(&classify(&["--model", s(&external), "--json", s(&image)]));
    assert_eq!(
        a.replace(s(&foreign_model()), ""),
        b.replace(s(&external), "")
    );
    ok(&msn(&[
        "fold",
        s(&external),
        "-o",
        s(&dir.path().join("folded.onnx")),
    ]));

    // A location out of the folder is refused before any file is opened.
    for bad in ["../weights.bin", "/etc/passwd"] {
        let mut m = model.clone();
        let graph = m.graph.as_mut().unwrap();
        let mut tensors = graph.initializer.iter_mut();
        let t = tensors.find(|t| !t.external_data.is_empty()).unwrap();
        t.external_data[0].value = Some(bad.into());
        let p = dir.path().join("bad.onnx");
        msn_onnx::io::save(&m, &p).unwrap();
        assert_fails_with(
            &classify(&["--model", s(&p), s(&image)]),
            "not a plain relative path inside the model's folder",
        );
    }
    // The data file missing: named.
    std::fs::remove_file(dir.path().join("weights.bin")).unwrap();
    assert_fails_with(
        &classify(&["--model", s(&external), s(&image)]),
        "weights.bin",
    );
}
