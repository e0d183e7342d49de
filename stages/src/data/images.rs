//! [`Images`]: a set of equally sized u8 images with class labels, stored as one contiguous array.

use anyhow::{bail, ensure, Result};

/// `n` images of `h`×`w`×`c` bytes each, laid out image after image, each in HWC order
/// (row-major, channels interleaved), as decoders produce them. One allocation for the whole set keeps
/// loading a single read and batch assembly cache-friendly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// `n·h·w·c` bytes, HWC per image.
    pub pixels: Vec<u8>,
    /// `n` class ids, each below the dataset's class count.
    pub labels: Vec<u32>,
}

impl Images {
    /// An empty set of images of the given shape.
    pub fn empty(h: usize, w: usize, c: usize) -> Self {
        Images {
            n: 0,
            h,
            w,
            c,
            pixels: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Bytes per image (`h·w·c`).
    pub fn image_len(&self) -> usize {
        self.h * self.w * self.c
    }

    /// The HWC bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let len = self.image_len();
        &self.pixels[i * len..(i + 1) * len]
    }

    /// How many images each class has, for classes `0..num_classes`.
    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; num_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The sample ids of each class, in ascending order.
    pub fn ids_by_class(&self, num_classes: usize) -> Vec<Vec<usize>> {
        let mut by_class = vec![Vec::new(); num_classes];
        for (i, &l) in self.labels.iter().enumerate() {
            by_class[l as usize].push(i);
        }
        by_class
    }

    /// A new set holding the images `ids`, in that order.
    pub fn select(&self, ids: &[usize]) -> Images {
        let len = self.image_len();
        let mut pixels = Vec::with_capacity(ids.len() * len);
        for &i in ids {
            pixels.extend_from_slice(self.image(i));
        }
        Images {
            n: ids.len(),
            h: self.h,
            w: self.w,
            c: self.c,
            pixels,
            labels: ids.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// Keeps at most `limit` images, balanced over classes: each class keeps its first
    /// `limit / k` images (the first `limit % k` classes one more), so small quick pipelines still see
    /// every class. Order among the kept images is preserved.
    pub fn limit_balanced(&self, limit: usize, num_classes: usize) -> Result<Images> {
        ensure!(
            limit >= num_classes,
            "a limit of {limit} images cannot hold one image of each of the {num_classes} classes"
        );
        let mut quota: Vec<usize> = (0..num_classes)
            .map(|k| limit / num_classes + usize::from(k < limit % num_classes))
            .collect();
        let ids: Vec<usize> = (0..self.n)
            .filter(|&i| {
                let q = &mut quota[self.labels[i] as usize];
                let keep = *q > 0;
                *q = q.saturating_sub(1);
                keep
            })
            .collect();
        Ok(self.select(&ids))
    }

    /// Checks the internal consistency: array sizes match `n`, labels are below `num_classes`.
    pub fn validate(&self, num_classes: usize) -> Result<()> {
        let expected = [self.h, self.w, self.c]
            .iter()
            .try_fold(self.n, |a, &b| a.checked_mul(b));
        ensure!(
            expected.is_some(),
            "{} images of {}×{}×{} are more bytes than can exist",
            self.n,
            self.h,
            self.w,
            self.c
        );
        ensure!(
            Some(self.pixels.len()) == expected,
            "pixel array holds {} bytes, expected {} images × {}×{}×{} = {}",
            self.pixels.len(),
            self.n,
            self.h,
            self.w,
            self.c,
            expected.unwrap_or(usize::MAX)
        );
        ensure!(
            self.labels.len() == self.n,
            "{} labels for {} images",
            self.labels.len(),
            self.n
        );
        if let Some((i, &l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= num_classes)
        {
            bail!("image {i} has label {l}, but there are only {num_classes} classes");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labelled(labels: &[u32]) -> Images {
        Images {
            n: labels.len(),
            h: 1,
            w: 1,
            c: 1,
            pixels: (0..labels.len() as u8).collect(),
            labels: labels.to_vec(),
        }
    }

    #[test]
    fn limit_balanced_keeps_first_images_of_each_class() {
        let imgs = labelled(&[0, 1, 0, 1, 0, 2, 1, 2, 0]);
        let lim = imgs.limit_balanced(5, 3).unwrap();
        // quotas 2, 2, 1: keeps ids 0, 1, 2, 3, 5.
        assert_eq!(lim.pixels, vec![0, 1, 2, 3, 5]);
        assert_eq!(lim.labels, vec![0, 1, 0, 1, 2]);
        assert!(imgs.limit_balanced(2, 3).is_err());
    }

    #[test]
    fn validate_rejects_out_of_range_labels() {
        let imgs = labelled(&[0, 3]);
        assert!(imgs.validate(4).is_ok());
        let err = imgs.validate(3).unwrap_err().to_string();
        assert!(err.contains("label 3"), "{err}");
    }
}
