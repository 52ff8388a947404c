//! Hostile and awkward input across the tools, as one table: every case exits 0 or 2, never
//! panics or aborts, a refusal is one `error:` line, and a refused command writes nothing.

use msn_onnx::builder::{attr, GraphBuilder};
use msn_onnx::ModelProto;
use std::path::{Path, PathBuf};
use std::process::Command;

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn conv_model(attrs: Vec<msn_onnx::AttributeProto>) -> ModelProto {
    let mut b = GraphBuilder::new("g");
    let x = b.input("x", &[1, 2, 8, 8]);
    let w = b.initializer_f32("w", &ndarray::ArrayD::from_elem(vec![2, 2, 3, 3], 0.1));
    let y = b.node("Conv", &[&x, &w], "y", &attrs);
    b.output(&y, &[1, 2, 6, 6]);
    b.into_model(17)
}

/// A BatchNormalization of a vector (tract read past its shape, aborting debug builds), with
/// a constant `Range` beside it so that msn-fold hands the graph to tract's analysis.
fn batchnorm_of_a_vector() -> ModelProto {
    let mut b = GraphBuilder::new("g");
    let x = b.input("x", &[3]);
    let p: Vec<String> = ["s", "b", "m", "v"]
        .iter()
        .map(|n| b.initializer_f32(n, &ndarray::ArrayD::from_elem(vec![3], 1.0)))
        .collect();
    let y = b.node(
        "BatchNormalization",
        &[&x, &p[0], &p[1], &p[2], &p[3]],
        "y",
        &[],
    );
    b.output(&y, &[3]);
    let r: Vec<String> = [("r0", 0), ("r1", 3), ("r2", 1)]
        .iter()
        .map(|&(n, v)| b.initializer_i64(n, &ndarray::arr0(v).into_dyn()))
        .collect();
    let range = b.node("Range", &[&r[0], &r[1], &r[2]], "range", &[]);
    b.output(&range, &[3]);
    b.into_model(13)
}

fn save(dir: &Path, name: &str, m: &ModelProto) -> String {
    let p = dir.join(name);
    msn_onnx::io::save(m, &p).unwrap();
    s(&p)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    s(&p)
}

/// A PNG header claiming `w x h` with no pixel data after it.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    v.extend_from_slice(&w.to_be_bytes());
    v.extend_from_slice(&h.to_be_bytes());
    v.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    v
}

#[test]
fn every_hostile_case_exits_0_or_2_without_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("ok.png");
    image::GrayImage::from_fn(28, 28, |x, y| image::Luma([(x * y) as u8]))
        .save(&img)
        .unwrap();
    let img = s(&img);
    let out = s(&d.join("out.onnx"));
    let out_npy = s(&d.join("out.npy"));

    let mut tensor_mismatch = conv_model(vec![]);
    tensor_mismatch.graph.as_mut().unwrap().initializer[0].dims = vec![2, 2, 3, 4];
    let mut tensor_huge = conv_model(vec![]);
    tensor_huge.graph.as_mut().unwrap().initializer[0].dims = vec![1 << 40, 1 << 40];
    let mut tensor_negative = conv_model(vec![]);
    tensor_negative.graph.as_mut().unwrap().initializer[0].dims = vec![-2, 2, 3, 3];
    let mut external = conv_model(vec![]);
    external.graph.as_mut().unwrap().initializer[0].data_location = Some(1);
    let mut cycle = conv_model(vec![]);
    cycle.graph.as_mut().unwrap().node[0].input[0] = "y".into();
    let mut dangling = conv_model(vec![]);
    dangling.graph.as_mut().unwrap().node[0].input[1] = "nowhere".into();
    let mut meta_shape = conv_model(vec![]);
    msn_onnx::meta::set(&mut meta_shape, "msn.input_shape", "2,99999999,99999999");
    let mut meta_garbage = conv_model(vec![]);
    msn_onnx::meta::set(&mut meta_garbage, "msn.input_shape", "a,b");
    let mut meta_mean = conv_model(vec![]);
    msn_onnx::meta::set(&mut meta_mean, "msn.mean", "x,y,z");

    let models: Vec<(&str, ModelProto)> = vec![
        ("group0", conv_model(vec![attr::int("group", 0)])),
        ("group-huge", conv_model(vec![attr::int("group", i64::MAX)])),
        ("stride0", conv_model(vec![attr::ints("strides", &[0, 1])])),
        (
            "dilation-huge",
            conv_model(vec![attr::ints("dilations", &[1 << 50, 1])]),
        ),
        (
            "pads-negative",
            conv_model(vec![attr::ints("pads", &[-3, 0, 0, 0])]),
        ),
        ("pads-odd", conv_model(vec![attr::ints("pads", &[1, 1, 1])])),
        (
            "kernel0",
            conv_model(vec![attr::ints("kernel_shape", &[0, 3])]),
        ),
        ("axis-huge", {
            let mut m = conv_model(vec![]);
            m.graph.as_mut().unwrap().node[0]
                .attribute
                .push(attr::int("axis", 1 << 40));
            m
        }),
        ("tensor-mismatch", tensor_mismatch),
        ("tensor-huge", tensor_huge),
        ("tensor-negative", tensor_negative),
        ("external-data", external),
        ("cycle", cycle),
        ("dangling", dangling),
        ("meta-shape", meta_shape),
        ("meta-garbage", meta_garbage),
        ("meta-mean", meta_mean),
        ("batchnorm-of-a-vector", batchnorm_of_a_vector()),
    ];
    let fold = env!("CARGO_BIN_EXE_msn-fold");
    let classify = env!("CARGO_BIN_EXE_msn-classify");
    let msn = env!("CARGO_BIN_EXE_msn");
    let mut cases: Vec<(String, &str, Vec<String>, Option<String>)> = Vec::new();
    for (name, m) in &models {
        let path = save(d, &format!("{name}.onnx"), m);
        cases.push((
            format!("fold {name}"),
            fold,
            vec![path.clone(), "-o".into(), out.clone()],
            Some(out.clone()),
        ));
        cases.push((
            format!("classify {name}"),
            classify,
            vec!["--model".into(), path.clone(), img.clone()],
            None,
        ));
        cases.push((format!("info {name}"), msn, vec!["info".into(), path], None));
    }
    let bytes_cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("random", vec![0xff, 0x13, 0x37, 0x00, 0x42, 0x99]),
        ("truncated", {
            let b = std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fashion-cnn3-msn.onnx"),
            )
            .unwrap();
            b[..b.len() / 2].to_vec()
        }),
        ("text", b"this is not a model".to_vec()),
    ];
    for (name, b) in &bytes_cases {
        let path = write(d, &format!("{name}.onnx"), b);
        cases.push((
            format!("fold {name} bytes"),
            fold,
            vec![path.clone(), "-o".into(), out.clone()],
            Some(out.clone()),
        ));
        cases.push((
            format!("run {name} bytes"),
            msn,
            vec![
                "run".into(),
                path,
                "-i".into(),
                s(&d.join("none.npy")),
                "-o".into(),
                out_npy.clone(),
            ],
            Some(out_npy.clone()),
        ));
    }
    let images: Vec<(&str, Vec<u8>)> = vec![
        ("empty.png", vec![]),
        ("text.png", b"not an image".to_vec()),
        ("header-only.png", png_header(28, 28)),
        ("giant-header.png", png_header(1_000_000, 1_000_000)),
        ("zero-width.png", png_header(0, 28)),
        ("truncated.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF".to_vec()),
    ];
    for (name, b) in &images {
        let path = write(d, name, b);
        cases.push((format!("classify image {name}"), classify, vec![path], None));
    }
    let npys: Vec<(&str, Vec<u8>)> = vec![
        ("garbage.npy", b"\x93NUMPY garbage".to_vec()),
        ("zip.npz", b"PK\x03\x04 broken zip".to_vec()),
    ];
    let model =
        s(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fashion-cnn3-msn.onnx"));
    for (name, b) in &npys {
        let path = write(d, name, b);
        cases.push((
            format!("run {name}"),
            msn,
            vec![
                "run".into(),
                model.clone(),
                "-i".into(),
                path,
                "-o".into(),
                out_npy.clone(),
            ],
            Some(out_npy.clone()),
        ));
    }
    let flags: Vec<(&str, &str, Vec<&str>)> = vec![
        ("classify --top-k 0", classify, vec!["--top-k", "0", &img]),
        ("classify --batch 0", classify, vec!["--batch", "0", &img]),
        (
            "classify --scale nan",
            classify,
            vec!["--scale", "nan", &img],
        ),
        ("classify --std 0", classify, vec!["--std", "0", &img]),
        ("classify --resize 1", classify, vec!["--resize", "1", &img]),
        ("classify missing", classify, vec!["/no/such.png"]),
        (
            "bench --iters 0",
            msn,
            vec!["bench", &model, "--iters", "0"],
        ),
        ("fold missing", fold, vec!["/no/such.onnx", "-o", &out]),
        (
            "train --batch 0",
            msn,
            vec!["train", "--batch", "0", "--out", "/nonexistent/x"],
        ),
        (
            "train bad dataset",
            msn,
            vec![
                "train",
                "--dataset",
                "nope",
                "--epochs",
                "1",
                "--out",
                "/nonexistent/x",
            ],
        ),
    ];
    for (name, bin, args) in flags {
        cases.push((
            name.to_string(),
            bin,
            args.into_iter().map(String::from).collect(),
            None,
        ));
    }
    // Corrupt MNIST files: a header that claims more than the file holds, and a gzip bomb-ish
    // header with garbage behind it.
    let mnist = d.join("mnist");
    std::fs::create_dir_all(&mnist).unwrap();
    let mut header = vec![0, 0, 8, 3];
    for v in [u32::MAX, u32::MAX, u32::MAX] {
        header.extend_from_slice(&v.to_be_bytes());
    }
    std::fs::write(mnist.join("train-images-idx3-ubyte"), &header).unwrap();
    std::fs::write(
        mnist.join("train-labels-idx1-ubyte"),
        [0, 0, 8, 1, 255, 255, 255, 255],
    )
    .unwrap();
    std::fs::write(
        mnist.join("t10k-images-idx3-ubyte.gz"),
        b"\x1f\x8b\x08\x00garbage",
    )
    .unwrap();
    cases.push((
        "train on corrupt IDX".into(),
        msn,
        [
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            &s(&mnist),
            "--epochs",
            "1",
            "--out",
            &s(&d.join("run")),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        None,
    ));

    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut refused = 0;
    let mut accepted = Vec::new();
    for (name, bin, args, output) in &cases {
        if let Some(o) = output {
            let _ = std::fs::remove_file(o);
        }
        let out = Command::new(bin).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert!(
            code == Some(0) || code == Some(2),
            "{name}: exit {code:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        if code == Some(0) {
            accepted.push(name.as_str());
        }
        if code == Some(2) {
            refused += 1;
            assert!(stderr.contains("error"), "{name}: {stderr}");
            if let Some(o) = output {
                assert!(!PathBuf::from(o).exists(), "{name}: wrote {o}");
            }
        }
    }
    println!(
        "{} hostile cases, {refused} refused with exit 2; exit 0: {accepted:?}",
        cases.len()
    );
}
