//! Numeric bounds of config schemas. Every number a config gives ends up in libtorch as an `i64`
//! or an `f32`, so every schema bounds every number (the conformance suite checks it with
//! [`unbounded_numbers`]), and a method built without the pipeline's JSON Schema validation
//! (through the registry, or across the plugin boundary) still has its ranges enforced by
//! [`range_issues`].

use serde_json::Value;

use crate::issue::ConfigIssue;

/// The largest value each kind of setting takes: generous for any real run, small enough that
/// every product the loop forms stays inside `i64` and `f32`.
pub const MAX_EPOCHS: u64 = 100_000;
pub const MAX_BATCH_SIZE: u64 = 1 << 20;
pub const MAX_LR: f64 = 1000.0;

/// JSON pointers (into `schema`) of every number or integer without both a lower and an upper
/// bound. A `$ref` is followed once per definition.
pub fn unbounded_numbers(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_schema(schema, "", &mut out);
    out
}

fn walk_schema(s: &Value, path: &str, out: &mut Vec<String>) {
    match s {
        Value::Object(o) => {
            let numeric = match o.get("type") {
                Some(Value::String(t)) => t == "integer" || t == "number",
                Some(Value::Array(ts)) => ts
                    .iter()
                    .any(|t| t.as_str().is_some_and(|t| t == "integer" || t == "number")),
                _ => false,
            };
            let has = |a: &str, b: &str| o.contains_key(a) || o.contains_key(b);
            if numeric
                && !(has("minimum", "exclusiveMinimum") && has("maximum", "exclusiveMaximum"))
            {
                out.push(if path.is_empty() {
                    "/".into()
                } else {
                    path.into()
                });
            }
            for (k, v) in o {
                walk_schema(v, &format!("{path}/{}", escape(k)), out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                walk_schema(v, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

/// Every number in `value` outside the `minimum`/`maximum`/`exclusiveMinimum`/`exclusiveMaximum`
/// its `schema` gives it (following properties, array items and local `$ref`s), as issues at the
/// number's path. The pipeline's full JSON Schema validation reports the same; this is what a
/// method's own parse applies, so a registry or plugin caller cannot skip it.
pub fn range_issues(schema: &Value, value: &Value) -> Vec<ConfigIssue> {
    let mut out = Vec::new();
    check(schema, schema, value, "", &mut out);
    out
}

fn check(root: &Value, s: &Value, v: &Value, path: &str, out: &mut Vec<ConfigIssue>) {
    let Some(o) = s.as_object() else { return };
    if let Some(target) = o
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|p| root.pointer(p))
    {
        check(root, target, v, path, out);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        // Only the branches whose type fits the value: `Option<T>` is `anyOf [T, null]`.
        for branch in o.get(key).and_then(Value::as_array).into_iter().flatten() {
            if fits(root, branch, v) {
                check(root, branch, v, path, out);
            }
        }
    }
    match v {
        Value::Number(n) => {
            let Some(x) = n.as_f64() else { return };
            let bound = |k: &str| o.get(k).and_then(Value::as_f64);
            let at = if path.is_empty() { "/" } else { path };
            let mut fail = |m: String| out.push(ConfigIssue::new(at, Some(v.clone()), m));
            if let Some(m) = bound("minimum").filter(|&m| x < m) {
                fail(format!("{n} is less than the minimum of {m}"));
            }
            if let Some(m) = bound("exclusiveMinimum").filter(|&m| x <= m) {
                fail(format!("{n} must be greater than {m}"));
            }
            if let Some(m) = bound("maximum").filter(|&m| x > m) {
                fail(format!("{n} is greater than the maximum of {m}"));
            }
            if let Some(m) = bound("exclusiveMaximum").filter(|&m| x >= m) {
                fail(format!("{n} must be less than {m}"));
            }
        }
        Value::Object(fields) => {
            if let Some(props) = o.get("properties").and_then(Value::as_object) {
                for (k, fv) in fields {
                    if let Some(ps) = props.get(k) {
                        check(root, ps, fv, &format!("{path}/{}", escape(k)), out);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = o.get("items").filter(|i| i.is_object()) {
                for (i, iv) in items.iter().enumerate() {
                    check(root, is, iv, &format!("{path}/{i}"), out);
                }
            }
        }
        _ => {}
    }
}

/// Whether `v`'s JSON type is one `s` allows (a schema without a `type` allows any).
fn fits(root: &Value, s: &Value, v: &Value) -> bool {
    let s = match s.get("$ref").and_then(Value::as_str) {
        Some(r) => match r.strip_prefix('#').and_then(|p| root.pointer(p)) {
            Some(t) => t,
            None => return true,
        },
        None => s,
    };
    let name = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let ok = |t: &str| t == name || (t == "number" && name == "integer");
    match s.get("type") {
        None => true,
        Some(Value::String(t)) => ok(t),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).any(ok),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "lr": {"type": "number", "exclusiveMinimum": 0.0, "maximum": 1000.0},
                "epochs": {"type": "integer", "minimum": 1, "maximum": 100},
                "milestones": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 100}},
                "n": {"type": ["integer", "null"], "minimum": 1},
                "inner": {"$ref": "#/$defs/Inner"},
                "either": {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}]}
            },
            "$defs": {"Inner": {"type": "object", "properties": {"p": {"type": "number", "minimum": 0.0, "exclusiveMaximum": 1.0}}}}
        })
    }

    #[test]
    fn finds_every_number_missing_a_bound() {
        assert_eq!(unbounded_numbers(&schema()), ["/properties/n"]);
    }

    #[test]
    fn reports_each_out_of_range_number_at_its_path() {
        let v = json!({
            "lr": 0.0, "epochs": 101, "milestones": [1, 0], "n": null,
            "inner": {"p": 1.0}, "either": {"p": -1.0}
        });
        let issues = range_issues(&schema(), &v);
        let got: Vec<(&str, &str)> = issues
            .iter()
            .map(|i| (i.path.as_str(), i.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("/either/p", "-1.0 is less than the minimum of 0"),
                ("/epochs", "101 is greater than the maximum of 100"),
                ("/inner/p", "1.0 must be less than 1"),
                ("/lr", "0.0 must be greater than 0"),
                ("/milestones/1", "0 is less than the minimum of 1"),
            ]
        );
        let ok = json!({"lr": 1000.0, "epochs": 100, "milestones": [1], "inner": {"p": 0.0}});
        assert!(range_issues(&schema(), &ok).is_empty());
    }
}
