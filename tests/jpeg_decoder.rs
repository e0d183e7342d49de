//! The dataset option `decoder = "libjpeg-turbo"` through the real binary, on the quickstart's
//! committed CIFAR-10 JPEGs: its pixels are PIL's, bit for bit; the default (zune-jpeg) is
//! unchanged and absent from the resolved params (so every existing key stays); the option is in
//! the dataset node's key.

use std::path::{Path, PathBuf};
use std::process::Command;

/// FNV-1a 64 of PIL's RGB pixels of `data/cifar10-small/test` (classes sorted, files sorted by
/// name, HWC, concatenated), computed with PIL 13.0.0 / libjpeg-turbo 3.2.0 (PyPI `pillow`):
///
///     b = b"".join(np.asarray(Image.open(p).convert("RGB")).tobytes() for p in files)
///     h = 0xcbf29ce484222325; for x in b: h = ((h ^ x) * 0x100000001b3) % 2**64
const PIL_TEST_PIXELS_FNV: u64 = 0x27d4_731c_1be3_774c;

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn data_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cifar10-small")
}

fn semiflow(store: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_semiflow"))
        .args(args)
        .arg("--store")
        .arg(store)
        .env_remove("SEMIFLOW_TEST_KINDS")
        .env_remove("SEMIFLOW_STORE")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (resolved params, key, test pixels) of the dataset node decoded with `decoder` (None: default).
fn decode(dir: &Path, decoder: Option<&str>) -> (serde_json::Value, String, Vec<u8>) {
    let extra = decoder.map_or(String::new(), |d| format!("decoder = \"{d}\"\n"));
    let file = dir.join(format!("{}.toml", decoder.unwrap_or("default")));
    std::fs::write(
        &file,
        format!(
            "[pipeline]\nname = \"jpeg\"\n\n[datasets.c]\nformat = \"image-folder\"\nroot = \"{}\"\n{extra}\n[nodes.split]\nkind = \"split\"\ndata = \"c\"\nper_class = 1\n",
            data_root().display()
        ),
    )
    .unwrap();
    let store = dir.join("store");
    semiflow(&store, &["run", file.to_str().unwrap()]);
    let rec: serde_json::Value =
        serde_json::from_str(&semiflow(&store, &["show", "dataset.c", "--json"])).unwrap();
    let hash = rec["files"]["test.u8"]["hash"].as_str().unwrap();
    let pixels = std::fs::read(store.join("objects").join(&hash[..2]).join(hash)).unwrap();
    (
        rec["params"].clone(),
        rec["key"].as_str().unwrap().to_string(),
        pixels,
    )
}

#[test]
fn libjpeg_turbo_gives_pils_pixels_and_the_default_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (params, key, zune) = decode(dir.path(), None);
    assert!(params.get("decoder").is_none(), "{params}");
    let (params_turbo, key_turbo, turbo) = decode(dir.path(), Some("libjpeg-turbo"));
    assert_eq!(params_turbo["decoder"], "libjpeg-turbo");
    assert_ne!(
        key, key_turbo,
        "the decoder is part of the dataset node's key"
    );
    // Written out as the default: the default's key.
    let (_, key_explicit, _) = decode(dir.path(), Some("zune-jpeg"));
    assert_eq!(key_explicit, key);

    assert_eq!(turbo.len(), 1000 * 32 * 32 * 3);
    assert_eq!(
        fnv(&turbo),
        PIL_TEST_PIXELS_FNV,
        "libjpeg-turbo's pixels are not PIL's"
    );
    // zune-jpeg differs from both by a few levels in many bytes (README "Decoders").
    let diffs: Vec<u8> = zune
        .iter()
        .zip(&turbo)
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let max = *diffs.iter().max().unwrap();
    let share = diffs.iter().filter(|&&d| d > 0).count() as f64 / diffs.len() as f64;
    assert!((1..=4).contains(&max), "max difference {max}");
    assert!((0.15..0.3).contains(&share), "{share} of the bytes differ");
}

#[test]
fn decoder_is_checked_where_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    for (table, want) in [
        (
            "format = \"cifar-bin\"\ndecoder = \"libjpeg-turbo\"",
            "datasets.c.decoder: only image-folder datasets have JPEGs to decode",
        ),
        (
            "format = \"image-folder\"\ndecoder = \"pil\"",
            "datasets.c.decoder: unknown variant `pil`",
        ),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(
            &file,
            format!(
                "[pipeline]\nname = \"jpeg\"\n\n[datasets.c]\nroot = \"{}\"\n{table}\n\n[nodes.split]\nkind = \"split\"\ndata = \"c\"\nper_class = 1\n",
                data_root().display()
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_semiflow"))
            .args(["validate", file.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(want),
            "{table}: {stderr}"
        );
    }
}
