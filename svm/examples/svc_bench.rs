//! Fit and predict timing for `scripts/bench-svc.sh`.
//!
//! ```text
//! svc_bench <n_features> <train_x.f32> <train_y.u8> <test_x.f32> <out_prefix>
//! ```
//!
//! Inputs are raw little-endian arrays: features as row-major f32, labels as one byte each (1 =
//! member). Writes `<out_prefix>.pred.u8` (predictions, one byte each) and `<out_prefix>.dec.f64`
//! (decision values, little-endian f64) and prints one JSON object with the timings.

use std::time::Instant;
use unlearn_svm::{Svc, SvcParams};

fn read_f32(path: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        bytes.len().is_multiple_of(4),
        "{path}: length not a multiple of 4"
    );
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 5 {
        eprintln!(
            "usage: svc_bench <n_features> <train_x.f32> <train_y.u8> <test_x.f32> <out_prefix>"
        );
        std::process::exit(2);
    }
    let d: usize = args[0].parse().expect("n_features");
    let x = read_f32(&args[1]);
    let y: Vec<bool> = std::fs::read(&args[2])
        .unwrap_or_else(|e| panic!("{}: {e}", args[2]))
        .into_iter()
        .map(|b| b != 0)
        .collect();
    let q = read_f32(&args[3]);
    let params = SvcParams::default();

    let t = Instant::now();
    let model = Svc::fit(&x, d, &y, &params).expect("fit");
    let fit_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let dec = model.decision_function(&q).expect("decision_function");
    let pred: Vec<u8> = dec.iter().map(|&v| u8::from(v >= 0.0)).collect();
    let predict_s = t.elapsed().as_secs_f64();

    let prefix = &args[4];
    std::fs::write(format!("{prefix}.pred.u8"), &pred).expect("write predictions");
    let dec_bytes: Vec<u8> = dec.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(format!("{prefix}.dec.f64"), dec_bytes).expect("write decision values");
    println!(
        "{{\"fit_s\": {fit_s:.6}, \"predict_s\": {predict_s:.6}, \"n_train\": {}, \"n_test\": {}, \"n_support\": {}, \"iterations\": {}, \"intercept\": {}, \"threads\": {}}}",
        y.len(),
        dec.len(),
        model.n_support(),
        model.iterations(),
        model.intercept(),
        rayon::current_num_threads()
    );
}
