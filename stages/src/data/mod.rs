//! Datasets: reading image-folder trees, CIFAR binary batches and IDX files into one compact u8
//! array type; class-balanced label splits; SimCLR augmentations; batch loading.
