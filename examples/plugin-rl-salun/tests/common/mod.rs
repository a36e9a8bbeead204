//! Helpers shared by the tests: accuracies computed directly from the model's logits.
#![allow(dead_code)]

use unlearn_api::data::{Dataset, index_tensor};
use unlearn_api::model::Model;
use unlearn_api::tch::{self, Kind};

/// Share of `rows` of `data` whose argmax logit (eval mode) is the data set's own label.
pub fn accuracy(model: &Model, data: &Dataset, rows: &[usize]) -> f64 {
    let _g = tch::no_grad_guard();
    let idx = index_tensor(rows, data.images.device());
    let logits = model.forward_t(&data.batch_images(&idx), false);
    let pred = Vec::<i64>::try_from(logits.argmax(-1, false)).unwrap();
    let labels = data.labels_vec();
    let right = rows
        .iter()
        .zip(&pred)
        .filter(|&(&r, &p)| labels[r] == p)
        .count();
    right as f64 / rows.len() as f64
}

/// Every trainable parameter, flattened to f64, in name order.
pub fn flat_params(model: &Model) -> Vec<(String, Vec<f64>)> {
    model
        .parameters()
        .into_iter()
        .map(|(k, t)| {
            let v = Vec::<f64>::try_from(t.detach().to_kind(Kind::Double).flatten(0, -1)).unwrap();
            (k, v)
        })
        .collect()
}

/// True when every parameter and buffer of `a` equals `b`'s bit for bit.
pub fn same_weights(a: &Model, b: &Model) -> bool {
    let vb = b.var_store().variables();
    a.var_store()
        .variables()
        .iter()
        .all(|(k, t)| t.equal(&vb[k]))
}

/// True when every parameter and buffer is finite.
pub fn all_finite(model: &Model) -> bool {
    model
        .var_store()
        .variables()
        .values()
        .all(|t| t.isfinite().all().int64_value(&[]) == 1)
}
