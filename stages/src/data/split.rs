//! Class-balanced label subsets of a train set (SimCLRv2's 1% / 10% splits) and an optional
//! class-balanced validation holdout.
//!
//! Every draw is a pure function of the labels, the selection and the seed: classes are visited in
//! label order and each class's ids are shuffled by one ChaCha8 stream, so the result does not depend
//! on anything else. Id files hold one train-sample index per line, sorted ascending.

use std::fs;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::derive_seed;

/// How the labeled subset is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// `floor(fraction · n_c)` images of each class c (n_c = the class's size in the whole train set).
    Fraction(f64),
    /// Exactly this many images of each class.
    PerClass(usize),
    /// These train-sample ids, as given by a user list file.
    Ids(Vec<usize>),
}

/// A drawn split: sorted ids and per-class counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub labeled: Vec<usize>,
    /// Held-out validation ids (empty without a holdout); disjoint from `labeled`.
    pub val: Vec<usize>,
    pub labeled_per_class: Vec<usize>,
    pub val_per_class: Vec<usize>,
}

/// Guards `floor` against products such as 0.29 · 100 = 28.999999999999996.
const FLOOR_EPS: f64 = 1e-9;

fn count_of(fraction: f64, n: usize) -> usize {
    (fraction * n as f64 + FLOOR_EPS).floor() as usize
}

/// Draws the labeled subset (and a validation holdout of `holdout · n_c` images per class) from
/// train labels `labels` with classes `classes`.
pub fn draw(
    labels: &[u32],
    classes: &[String],
    selection: &Selection,
    holdout: Option<f64>,
    seed: u64,
) -> Result<Split> {
    let k = classes.len();
    let mut by_class = vec![Vec::new(); k];
    for (i, &l) in labels.iter().enumerate() {
        ensure!((l as usize) < k, "sample {i} has label {l} ≥ {k} classes");
        by_class[l as usize].push(i);
    }
    let smallest = (0..k).min_by_key(|&c| by_class[c].len()).unwrap_or(0);
    let n_min = by_class.get(smallest).map_or(0, Vec::len);
    ensure!(
        n_min > 0,
        "class `{}` has no train images",
        classes.get(smallest).map_or("?", String::as_str)
    );

    // Requested per-class counts, validated up front so errors name the real cause.
    let val_counts: Vec<usize> = match holdout {
        None => vec![0; k],
        Some(h) => {
            ensure!(
                h > 0.0 && h < 1.0,
                "holdout must be a fraction in (0, 1), got {h}"
            );
            ensure!(
                count_of(h, n_min) >= 1,
                "holdout {h} gives no validation image for class `{}` ({n_min} train images); \
                 the smallest holdout giving one image per class is {}",
                classes[smallest],
                1.0 / n_min as f64
            );
            by_class.iter().map(|ids| count_of(h, ids.len())).collect()
        }
    };
    let listed: Option<Vec<bool>> = match selection {
        Selection::Ids(ids) => {
            let mut mark = vec![false; labels.len()];
            for &i in ids {
                ensure!(
                    i < labels.len(),
                    "listed id {i} is out of range: the train set has {} images (ids 0..{})",
                    labels.len(),
                    labels.len().saturating_sub(1)
                );
                ensure!(!mark[i], "id {i} is listed twice");
                mark[i] = true;
            }
            Some(mark)
        }
        _ => None,
    };
    let labeled_counts: Vec<usize> = match selection {
        Selection::Fraction(f) => {
            ensure!(*f > 0.0 && *f <= 1.0, "fraction must be in (0, 1], got {f}");
            ensure!(
                count_of(*f, n_min) >= 1,
                "fraction {f} gives no image of class `{}` ({n_min} train images); the smallest \
                 fraction giving one image per class is {}",
                classes[smallest],
                1.0 / n_min as f64
            );
            by_class.iter().map(|ids| count_of(*f, ids.len())).collect()
        }
        Selection::PerClass(m) => {
            ensure!(*m >= 1, "per_class must be at least 1");
            vec![*m; k]
        }
        Selection::Ids(_) => vec![0; k], // not drawn
    };

    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed("split", &[seed]));
    let mut split = Split {
        labeled: Vec::new(),
        val: Vec::new(),
        labeled_per_class: vec![0; k],
        val_per_class: vec![0; k],
    };
    for c in 0..k {
        // Only images outside a user list may be held out.
        let mut pool: Vec<usize> = match &listed {
            Some(mark) => by_class[c].iter().copied().filter(|&i| !mark[i]).collect(),
            None => by_class[c].clone(),
        };
        pool.shuffle(&mut rng);
        let (nv, nl) = (val_counts[c], labeled_counts[c]);
        if nv + nl > pool.len() {
            let what = match selection {
                Selection::Ids(_) => "the images not in the list".to_string(),
                _ if nv > 0 => format!("its {} images (labeled {nl} + held out {nv})", pool.len()),
                _ => format!("its {} images", pool.len()),
            };
            bail!(
                "class `{}` cannot give {} images from {what}",
                classes[c],
                nv + nl
            );
        }
        split.val.extend_from_slice(&pool[..nv]);
        split.labeled.extend_from_slice(&pool[nv..nv + nl]);
        split.val_per_class[c] = nv;
        split.labeled_per_class[c] = nl;
    }
    if let Selection::Ids(ids) = selection {
        split.labeled = ids.clone();
        for &i in ids {
            split.labeled_per_class[labels[i] as usize] += 1;
        }
    }
    split.labeled.sort_unstable();
    split.val.sort_unstable();
    Ok(split)
}

/// Parses an id list: one non-negative integer per line; blank lines and `#` comments are ignored.
/// `source` names the list in errors.
pub fn parse_ids(text: &str, source: &str) -> Result<Vec<usize>> {
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let id = line.parse::<usize>().with_context(|| {
            format!(
                "{source}:{}: `{line}` is not a sample id (one non-negative integer per line)",
                n + 1
            )
        })?;
        ids.push(id);
    }
    Ok(ids)
}

/// Reads the id file `file` (e.g. `split.txt` or `val.txt`) of a split artifact in `dir`.
pub fn load_ids(dir: &Path, file: &str) -> Result<Vec<usize>> {
    let path = dir.join(file);
    let text = fs::read_to_string(&path)
        .with_context(|| format!("cannot read id list {}", path.display()))?;
    parse_ids(&text, &path.display().to_string())
}

/// Writes ids one per line.
pub fn write_ids(path: &Path, ids: &[usize]) -> Result<()> {
    let mut text = String::with_capacity(ids.len() * 6);
    for i in ids {
        text.push_str(&i.to_string());
        text.push('\n');
    }
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(k: usize) -> Vec<String> {
        (0..k).map(|i| format!("c{i}")).collect()
    }

    /// 3 classes with 10, 20 and 30 images, interleaved.
    fn labels() -> Vec<u32> {
        let mut l = Vec::new();
        for i in 0..30u32 {
            l.push(2);
            if i < 20 {
                l.push(1);
            }
            if i < 10 {
                l.push(0);
            }
        }
        l
    }

    fn class_of(l: &[u32], ids: &[usize]) -> Vec<usize> {
        let mut c = vec![0; 3];
        for &i in ids {
            c[l[i] as usize] += 1;
        }
        c
    }

    #[test]
    fn fraction_is_balanced_and_deterministic() {
        let l = labels();
        let s = draw(&l, &classes(3), &Selection::Fraction(0.3), None, 7).unwrap();
        assert_eq!(s.labeled_per_class, [3, 6, 9]);
        assert_eq!(class_of(&l, &s.labeled), [3, 6, 9]);
        assert!(s.labeled.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            s,
            draw(&l, &classes(3), &Selection::Fraction(0.3), None, 7).unwrap()
        );
        let other = draw(&l, &classes(3), &Selection::Fraction(0.3), None, 8).unwrap();
        assert_ne!(s.labeled, other.labeled);
        // 0.29 · 100 must not floor to 28.
        assert_eq!(count_of(0.29, 100), 29);
    }

    #[test]
    fn too_small_fraction_names_the_minimum() {
        let err = draw(&labels(), &classes(3), &Selection::Fraction(0.05), None, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("c0") && err.contains("0.1"), "{err}");
        assert!(draw(&labels(), &classes(3), &Selection::Fraction(0.1), None, 0).is_ok());
    }

    #[test]
    fn per_class_and_holdout_are_disjoint() {
        let l = labels();
        let s = draw(&l, &classes(3), &Selection::PerClass(4), Some(0.5), 3).unwrap();
        assert_eq!(class_of(&l, &s.labeled), [4, 4, 4]);
        assert_eq!(class_of(&l, &s.val), [5, 10, 15]);
        assert!(s.labeled.iter().all(|i| !s.val.contains(i)));
        // 10-image class: 6 held out + 5 labeled does not fit.
        let err = draw(&l, &classes(3), &Selection::PerClass(5), Some(0.6), 3).unwrap_err();
        assert!(err.to_string().contains("c0"), "{err}");
    }

    #[test]
    fn list_selection_validates_ids() {
        let l = labels();
        let s = draw(
            &l,
            &classes(3),
            &Selection::Ids(vec![5, 0, 1]),
            Some(0.2),
            1,
        )
        .unwrap();
        assert_eq!(s.labeled, [0, 1, 5]);
        assert_eq!(s.labeled_per_class, class_of(&l, &[0, 1, 5]));
        assert!(s.val.iter().all(|i| ![0, 1, 5].contains(i)));
        assert_eq!(class_of(&l, &s.val), [2, 4, 6]);
        let err = draw(&l, &classes(3), &Selection::Ids(vec![60]), None, 1).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = draw(&l, &classes(3), &Selection::Ids(vec![2, 2]), None, 1).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn id_files_roundtrip_and_report_bad_lines() {
        let t = tempfile::tempdir().unwrap();
        write_ids(&t.path().join("split.txt"), &[1, 5, 40]).unwrap();
        assert_eq!(load_ids(t.path(), "split.txt").unwrap(), [1, 5, 40]);
        assert_eq!(parse_ids("# ids\n3\n\n 4 # four\n", "x").unwrap(), [3, 4]);
        let err = format!("{:#}", parse_ids("1\nfoo.jpg\n", "list.txt").unwrap_err());
        assert!(err.contains("list.txt:2"), "{err}");
        assert!(load_ids(t.path(), "val.txt").is_err());
    }
}
