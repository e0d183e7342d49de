//! A node's identity: the cache key and the named components it is made of.
//!
//! Invariant: the key is a pure function of what determines a stage's output — key-schema version,
//! kind, kind implementation version, resolved parameters (defaults filled), input artifact hashes by
//! role, dataset fingerprint and seed. It deliberately excludes the node's name, the pipeline file's
//! path, `checkpoint_every`, log settings and the store path, so renaming a node or moving the
//! pipeline keeps the cache.
//!
//! The key is blake3 over the canonical JSON of a structured object (so no two different
//! configurations can render to the same bytes); [`Key::components`] is a flat, display-oriented
//! rendering of the same information that `status` diffs to say why a node reruns.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// Bump when the encoding below changes: every existing key becomes unreachable (a full rebuild).
pub const KEY_SCHEMA: u32 = 1;

/// The inputs to a key.
#[derive(Debug, Clone)]
pub struct KeyInput<'a> {
    pub kind: &'a str,
    pub kind_version: u32,
    pub params: &'a Value,
    /// role → artifact content hashes, in reference order.
    pub inputs: &'a BTreeMap<String, Vec<String>>,
    /// Dataset fingerprint, for dataset nodes only.
    pub dataset: Option<&'a str>,
    pub seed: u64,
    /// The shared numerics version, for kinds whose outputs depend on floating-point arithmetic.
    /// Version 0 (the arithmetic every key before it existed was computed with) is left out of the
    /// key, so those keys stay valid; any later version enters it.
    pub numerics: Option<u32>,
}

/// A computed cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// 64 lowercase hex digits.
    pub hex: String,
    /// `(component name, rendered value)` in a stable order: `schema`, `kind`, `code <kind>`,
    /// `param <dotted.path>`..., `input <role>`..., `dataset`, `seed`.
    pub components: Vec<(String, String)>,
}

impl Key {
    pub fn compute(k: &KeyInput) -> Key {
        let mut inputs = serde_json::Map::new();
        for (role, hashes) in k.inputs {
            inputs.insert(role.clone(), Value::from(hashes.clone()));
        }
        let mut doc = serde_json::json!({
            "schema": KEY_SCHEMA,
            "kind": k.kind,
            "kind_version": k.kind_version,
            "params": k.params,
            "inputs": inputs,
            "dataset": k.dataset,
            "seed": k.seed,
        });
        if let Some(v) = k.numerics.filter(|&v| v > 0) {
            doc["numerics"] = Value::from(v);
        }
        let hex = blake3::hash(canonical_json(&doc).as_bytes())
            .to_hex()
            .to_string();
        Key {
            hex,
            components: components(k),
        }
    }
}

/// The display components of a key; also usable when some inputs are not known yet
/// (then those roles are simply absent).
pub fn components(k: &KeyInput) -> Vec<(String, String)> {
    let mut out = vec![
        ("schema".to_string(), KEY_SCHEMA.to_string()),
        ("kind".to_string(), k.kind.to_string()),
        (format!("code {}", k.kind), format!("v{}", k.kind_version)),
    ];
    if let Some(v) = k.numerics.filter(|&v| v > 0) {
        out.push(("numerics".to_string(), format!("v{v}")));
    }
    flatten_params("", k.params, &mut out);
    for (role, hashes) in k.inputs {
        if hashes.len() == 1 {
            out.push((format!("input {role}"), hashes[0].clone()));
        } else {
            for (i, h) in hashes.iter().enumerate() {
                out.push((format!("input {role}[{i}]"), h.clone()));
            }
        }
    }
    if let Some(fp) = k.dataset {
        out.push(("dataset".to_string(), fp.to_string()));
    }
    out.push(("seed".to_string(), k.seed.to_string()));
    out
}

/// `{"model": {"depth": 18}, "epochs": 3}` → `param epochs` = `3`, `param model.depth` = `18`.
/// Arrays and scalars are leaves rendered as canonical JSON.
fn flatten_params(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten_params(&path, &map[key], out);
            }
        }
        leaf if prefix.is_empty() => out.push(("params".to_string(), canonical_json(leaf))),
        leaf => out.push((format!("param {prefix}"), canonical_json(leaf))),
    }
}

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no whitespace, strings escaped as
/// serde_json does, numbers as serde_json prints them (integers exactly; floats in their shortest
/// round-trip form, so `0.1` is always `0.1`).
pub fn canonical_json(v: &Value) -> String {
    let mut s = String::new();
    write_canonical(v, &mut s);
    s
}

fn write_canonical(v: &Value, s: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            s.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&Value::String(key.clone()).to_string());
                s.push(':');
                write_canonical(&map[key], s);
            }
            s.push('}');
        }
        Value::Array(items) => {
            s.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                write_canonical(item, s);
            }
            s.push(']');
        }
        leaf => {
            let _ = write!(s, "{leaf}");
        }
    }
}

/// `3fa2c0d1…` for a long hex hash; other values unchanged. For human-facing messages only.
pub fn short(value: &str) -> String {
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("{}…", &value[..8])
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(params: Value, inputs: &[(&str, &[&str])], seed: u64) -> Key {
        let inputs: BTreeMap<String, Vec<String>> = inputs
            .iter()
            .map(|(r, hs)| (r.to_string(), hs.iter().map(|h| h.to_string()).collect()))
            .collect();
        Key::compute(&KeyInput {
            kind: "pretrain",
            kind_version: 2,
            params: &params,
            inputs: &inputs,
            dataset: None,
            seed,
            numerics: Some(0),
        })
    }

    #[test]
    fn numerics_version_0_keeps_old_keys_and_later_ones_change_them() {
        let params = json!({"epochs": 3});
        let inputs = BTreeMap::new();
        let k = |numerics| {
            Key::compute(&KeyInput {
                kind: "pretrain",
                kind_version: 2,
                params: &params,
                inputs: &inputs,
                dataset: None,
                seed: 0,
                numerics,
            })
        };
        assert_eq!(k(None), k(Some(0)));
        assert_ne!(k(Some(0)).hex, k(Some(1)).hex);
        assert!(k(Some(1))
            .components
            .contains(&("numerics".to_string(), "v1".to_string())));
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 0.1}], "x": "s"}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":"s","y":[1,{"c":0.1,"d":2}]},"b":1}"#
        );
    }

    #[test]
    fn key_ignores_object_key_order_but_not_values() {
        let k1 = key(json!({"epochs": 3, "lr": 0.1}), &[], 0);
        let k2 = key(json!({"lr": 0.1, "epochs": 3}), &[], 0);
        let k3 = key(json!({"lr": 0.1, "epochs": 4}), &[], 0);
        assert_eq!(k1.hex, k2.hex);
        assert_ne!(k1.hex, k3.hex);
        assert_ne!(k1.hex, key(json!({"epochs": 3, "lr": 0.1}), &[], 1).hex);
    }

    #[test]
    fn key_depends_on_inputs_by_role() {
        let a = key(json!({}), &[("from", &["aa"])], 0);
        let b = key(json!({}), &[("teacher", &["aa"])], 0);
        let c = key(json!({}), &[("from", &["bb"])], 0);
        assert_ne!(a.hex, b.hex);
        assert_ne!(a.hex, c.hex);
    }

    #[test]
    fn components_are_flat_and_named() {
        let k = key(
            json!({"epochs": 3, "model": {"depth": 18}}),
            &[("from", &["h1"]), ("models", &["m0", "m1"])],
            7,
        );
        let names: Vec<&str> = k.components.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "schema",
                "kind",
                "code pretrain",
                "param epochs",
                "param model.depth",
                "input from",
                "input models[0]",
                "input models[1]",
                "seed"
            ]
        );
        assert_eq!(k.components[2].1, "v2");
        assert_eq!(k.components[4].1, "18");
    }
}
