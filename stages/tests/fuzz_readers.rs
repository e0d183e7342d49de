//! Fuzzing the dataset readers on mutated files: IDX (raw and `.gz`), CIFAR-10 and CIFAR-100
//! binary batches, and image-folder trees of PNG and JPEG files.
//!
//! Each case writes a small valid dataset root (files generated here: IDX headers and bytes,
//! CIFAR records, PNG / JPEG images encoded with the `image` crate), mutates one of its files
//! (byte flips, truncation, appended junk, header fields set to huge or zero values, wrong magic
//! numbers, lying IDX headers, image dimensions rewritten with or without a valid PNG CRC; for
//! `.gz` files the compressed bytes or the content before compression) and reads the root.
//!
//! Properties, per case: no panic; no hang (a time bound per case); no allocation larger than
//! [`ALLOC_LIMIT`] (the inputs are a few KiB, so anything bigger was sized from a lying header);
//! an error names the mutated file; a dataset that is returned is consistent (sizes agree in
//! exact arithmetic, images have at least one pixel, there is a train image, labels are in range).
//!
//! Case counts: `PROPTEST_CASES` per target (default 400). Failures are persisted under
//! `tests/proptest-regressions/`; each bug found also has a plain regression test at the end.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use semiflow_stages::data::{cifar, idx, image_folder, Dataset};

// ---------------------------------------------------------------------------------------------
// Allocation tracking

/// The largest single allocation a case may make. Every input here is a few KiB; a reader that
/// asks for more believed a header over the file's size.
const ALLOC_LIMIT: usize = 64 << 20;

/// The system allocator, remembering the largest request since the last [`take_largest`].
struct Tracking;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only records sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

fn take_largest() -> usize {
    LARGEST.swap(0, Ordering::Relaxed)
}

/// The targets run one at a time, so the largest allocation belongs to the case that made it.
static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// Valid dataset roots

/// A dataset root's files: (path relative to the root, bytes). For `.gz` files the bytes are the
/// content before compression.
#[derive(Debug, Clone)]
struct Fixture {
    files: Vec<(&'static str, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Idx,
    IdxGz,
    Cifar10,
    Cifar100,
    ImageFolder,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Idx => "IDX",
            Target::IdxGz => "IDX.gz",
            Target::Cifar10 => "CIFAR-10 binary",
            Target::Cifar100 => "CIFAR-100 binary",
            Target::ImageFolder => "image-folder (PNG, JPEG)",
        }
    }

    fn fixture(self) -> Fixture {
        match self {
            Target::Idx => idx_fixture(false),
            Target::IdxGz => idx_fixture(true),
            Target::Cifar10 => cifar_fixture(false),
            Target::Cifar100 => cifar_fixture(true),
            Target::ImageFolder => image_folder_fixture(),
        }
    }

    fn read(self, root: &Path) -> anyhow::Result<Dataset> {
        match self {
            Target::Idx | Target::IdxGz => idx::read(root, "train", "t10k"),
            Target::Cifar10 | Target::Cifar100 => cifar::read(root),
            Target::ImageFolder => image_folder::read(root, "train", "test"),
        }
    }
}

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// Four 2×3 train images (four, so that 4·2³¹·2³¹ wraps a u64 to 0) and two test images.
fn idx_fixture(gz: bool) -> Fixture {
    let px: Vec<u8> = (0..4 * 6).map(|i| (i * 10) as u8).collect();
    let files = vec![
        ("train-images-idx3-ubyte", idx_bytes(&[4, 2, 3], &px)),
        ("train-labels-idx1-ubyte", idx_bytes(&[4], &[0, 1, 2, 1])),
        ("t10k-images-idx3-ubyte", idx_bytes(&[2, 2, 3], &px[..12])),
        ("t10k-labels-idx1-ubyte", idx_bytes(&[2], &[1, 0])),
    ];
    let files = if gz {
        const GZ: [&str; 4] = [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ];
        files
            .into_iter()
            .zip(GZ)
            .map(|((_, b), name)| (name, b))
            .collect()
    } else {
        files
    };
    Fixture { files }
}

fn cifar_record(coarse: Option<u8>, label: u8) -> Vec<u8> {
    let mut r: Vec<u8> = coarse.into_iter().collect();
    r.push(label);
    r.extend((0..3072).map(|p| (p % 251) as u8 ^ label));
    r
}

fn cifar_fixture(cifar100: bool) -> Fixture {
    let files = if cifar100 {
        let names: String = (0..100).map(|i| format!("class_{i}\n")).collect();
        vec![
            (
                "train.bin",
                [cifar_record(Some(3), 55), cifar_record(Some(19), 99)].concat(),
            ),
            ("test.bin", cifar_record(Some(0), 0)),
            ("fine_label_names.txt", names.into_bytes()),
        ]
    } else {
        let names: String = (0..10).map(|i| format!("class{i}\n")).collect();
        vec![
            (
                "data_batch_1.bin",
                [cifar_record(None, 1), cifar_record(None, 9)].concat(),
            ),
            ("data_batch_2.bin", cifar_record(None, 0)),
            ("test_batch.bin", cifar_record(None, 7)),
            ("batches.meta.txt", names.into_bytes()),
        ]
    };
    Fixture { files }
}

fn encode(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// 6×4 images: RGB and grayscale, PNG and JPEG (baseline), two classes, both splits.
fn image_folder_fixture() -> Fixture {
    use image::{DynamicImage, GrayImage, ImageFormat, RgbImage};
    let rgb = |seed: u8| {
        DynamicImage::ImageRgb8(RgbImage::from_fn(6, 4, |x, y| {
            image::Rgb([seed, (x * 40) as u8, (y * 60) as u8])
        }))
    };
    let gray = |seed: u8| {
        DynamicImage::ImageLuma8(GrayImage::from_fn(6, 4, |x, y| {
            image::Luma([seed.wrapping_add((x * 30 + y * 7) as u8)])
        }))
    };
    Fixture {
        files: vec![
            ("train/cat/a.png", encode(rgb(10), ImageFormat::Png)),
            ("train/cat/b.jpg", encode(rgb(90), ImageFormat::Jpeg)),
            ("train/dog/c.png", encode(gray(30), ImageFormat::Png)),
            ("train/dog/d.jpeg", encode(gray(70), ImageFormat::Jpeg)),
            ("test/cat/e.jpg", encode(rgb(200), ImageFormat::Jpeg)),
            ("test/dog/f.png", encode(rgb(150), ImageFormat::Png)),
        ],
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Mutations

/// Values a lying header field takes (2, 3 and 4 are the fixtures' own sizes).
const HEADER_VALUES: &[u32] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    255,
    256,
    4096,
    8000,
    0xFFFF,
    0x10000,
    0x4000_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
];

fn header_value() -> impl Strategy<Value = u32> {
    prop_oneof![3 => prop::sample::select(HEADER_VALUES), 1 => any::<u32>()]
}

/// How many data bytes a rewritten IDX header keeps.
#[derive(Debug, Clone, Copy)]
enum Keep {
    All,
    Bytes(usize),
    /// As many as the new header promises in wrapping u64 arithmetic (what a reader multiplying
    /// without overflow checks expects), when the file has that many.
    Consistent,
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBytes(Vec<(Index, u8)>),
    Truncate(Index),
    AppendJunk(Vec<u8>),
    /// Overwrite the first four bytes (IDX, PNG and JPEG magic numbers, a CIFAR label).
    WrongMagic([u8; 4]),
    /// Overwrite the big-endian u32 header word `word` (IDX: 0 is the magic, then one per
    /// dimension).
    SetHeaderWord {
        word: Index,
        value: u32,
    },
    /// Rewrite IDX dimensions (`None` keeps one) and keep some data bytes.
    LyingIdxHeader {
        dims: Vec<Option<u32>>,
        keep: Keep,
    },
    /// Rewrite a PNG's IHDR or a JPEG's SOF width and height (a PNG's CRC fixed or not).
    ImageDims {
        width: u32,
        height: u32,
        fix_crc: bool,
    },
}

/// Mutations that fit `target`'s files (all of them get the generic ones).
fn mutation(target: Target) -> BoxedStrategy<Mutation> {
    let flips =
        prop::collection::vec((any::<Index>(), 1u8..=255), 1..8).prop_map(Mutation::FlipBytes);
    let truncate = any::<Index>().prop_map(Mutation::Truncate);
    let junk = prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::AppendJunk);
    let magic = any::<[u8; 4]>().prop_map(Mutation::WrongMagic);
    match target {
        Target::Idx | Target::IdxGz => prop_oneof![
            3 => flips,
            2 => truncate,
            1 => junk,
            1 => magic,
            4 => (any::<Index>(), header_value())
                .prop_map(|(word, value)| Mutation::SetHeaderWord { word, value }),
            6 => (
                prop::collection::vec(prop::option::of(header_value()), 3),
                prop_oneof![
                    Just(Keep::All),
                    Just(Keep::Bytes(0)),
                    Just(Keep::Bytes(1)),
                    Just(Keep::Consistent)
                ],
            )
                .prop_map(|(dims, keep)| Mutation::LyingIdxHeader { dims, keep }),
        ]
        .boxed(),
        Target::Cifar10 | Target::Cifar100 => {
            prop_oneof![4 => flips, 2 => truncate, 2 => junk, 1 => magic].boxed()
        }
        Target::ImageFolder => prop_oneof![
            4 => flips,
            2 => truncate,
            1 => junk,
            1 => magic,
            4 => (header_value(), header_value(), any::<bool>())
                .prop_map(|(width, height, fix_crc)| Mutation::ImageDims { width, height, fix_crc }),
        ]
        .boxed(),
    }
}

fn png_crc(bytes: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(bytes);
    c.sum()
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::FlipBytes(flips) => {
            if !bytes.is_empty() {
                for (i, x) in flips {
                    let at = i.index(bytes.len());
                    bytes[at] ^= x;
                }
            }
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
        Mutation::AppendJunk(junk) => bytes.extend_from_slice(junk),
        Mutation::WrongMagic(m) => {
            for (b, v) in bytes.iter_mut().zip(m) {
                *b = *v;
            }
        }
        Mutation::SetHeaderWord { word, value } => {
            // IDX header: magic + up to 3 dimensions.
            let words = (bytes.len() / 4).min(4);
            if words > 0 {
                let at = 4 * word.index(words);
                bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
            }
        }
        Mutation::LyingIdxHeader { dims, keep } => {
            if bytes.len() >= 4 && bytes[..3] == [0, 0, 8] {
                let n = (bytes[3] as usize).min(3);
                let header = 4 + 4 * n;
                if bytes.len() >= header {
                    for (k, d) in dims.iter().take(n).enumerate() {
                        if let Some(d) = d {
                            bytes[4 + 4 * k..8 + 4 * k].copy_from_slice(&d.to_be_bytes());
                        }
                    }
                    let keep = match keep {
                        Keep::All => bytes.len() - header,
                        Keep::Bytes(k) => *k,
                        Keep::Consistent => bytes[4..header]
                            .chunks_exact(4)
                            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64)
                            .fold(1u64, u64::wrapping_mul)
                            .try_into()
                            .unwrap_or(usize::MAX),
                    };
                    bytes.truncate(header.saturating_add(keep).min(bytes.len()));
                }
            }
        }
        Mutation::ImageDims {
            width,
            height,
            fix_crc,
        } => {
            if bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() >= 33 {
                bytes[16..20].copy_from_slice(&width.to_be_bytes());
                bytes[20..24].copy_from_slice(&height.to_be_bytes());
                if *fix_crc {
                    let crc = png_crc(&bytes[12..29]);
                    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
                }
            } else if let Some(sof) = bytes
                .windows(2)
                .position(|w| w[0] == 0xFF && matches!(w[1], 0xC0..=0xC2))
            {
                if bytes.len() >= sof + 9 {
                    bytes[sof + 5..sof + 7].copy_from_slice(&(*height as u16).to_be_bytes());
                    bytes[sof + 7..sof + 9].copy_from_slice(&(*width as u16).to_be_bytes());
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    /// Which file of the root is mutated.
    file: Index,
    /// For `.gz` files: mutate the content before compressing it (else the compressed bytes).
    before_gzip: bool,
    mutations: Vec<Mutation>,
}

fn case(target: Target) -> impl Strategy<Value = Case> {
    (
        any::<Index>(),
        any::<bool>(),
        prop::collection::vec(mutation(target), 1..4),
    )
        .prop_map(|(file, before_gzip, mutations)| Case {
            file,
            before_gzip,
            mutations,
        })
}

/// Write `fixture` under `root` with `case` applied; the mutated file's path.
fn write_root(root: &Path, fixture: &Fixture, case: &Case) -> PathBuf {
    write_root_at(root, fixture, case.file.index(fixture.files.len()), case)
}

/// [`write_root`] with file number `target` mutated.
fn write_root_at(root: &Path, fixture: &Fixture, target: usize, case: &Case) -> PathBuf {
    let mut mutated = None;
    for (i, (name, content)) in fixture.files.iter().enumerate() {
        let gz = name.ends_with(".gz");
        let mut bytes = content.clone();
        if i == target && (!gz || case.before_gzip) {
            for m in &case.mutations {
                apply(&mut bytes, m);
            }
        }
        if gz {
            bytes = gzip(&bytes);
        }
        if i == target && gz && !case.before_gzip {
            for m in &case.mutations {
                apply(&mut bytes, m);
            }
        }
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        if i == target {
            mutated = Some(path);
        }
    }
    mutated.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Running one case

/// A case that takes longer than this counts as a hang (normal cases take about a millisecond).
const CASE_TIME_LIMIT: Duration = Duration::from_secs(5);

/// What a reader returned: the dataset's consistency problem (if any) or its rendered error.
type Outcome = Result<Option<String>, String>;

/// Problems with a dataset a reader returned, in exact arithmetic.
fn inconsistency(ds: &Dataset) -> Option<String> {
    if ds.classes.is_empty() {
        return Some("no classes".into());
    }
    if ds.train.n == 0 {
        return Some("no train images".into());
    }
    for (part, im) in [("train", &ds.train), ("test", &ds.test)] {
        let want = im.n as u128 * im.h as u128 * im.w as u128 * im.c as u128;
        if im.pixels.len() as u128 != want {
            return Some(format!(
                "{part}: {} pixel bytes for {} images of {}×{}×{} = {want}",
                im.pixels.len(),
                im.n,
                im.h,
                im.w,
                im.c
            ));
        }
        if im.h == 0 || im.w == 0 || !(im.c == 1 || im.c == 3) {
            return Some(format!("{part}: images of {}×{}×{}", im.h, im.w, im.c));
        }
        if im.labels.len() != im.n {
            return Some(format!(
                "{part}: {} labels, {} images",
                im.labels.len(),
                im.n
            ));
        }
    }
    if ds.test.n > 0 && (ds.train.h, ds.train.w, ds.train.c) != (ds.test.h, ds.test.w, ds.test.c) {
        return Some("train and test shapes differ".into());
    }
    ds.validate().err().map(|e| format!("{e:#}"))
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| e.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

/// Read `root` in a thread under `catch_unwind`, bounded by [`CASE_TIME_LIMIT`], and check the
/// properties; `mutated` is the file the error must name.
fn check(target: Target, root: &Path, mutated: &Path) -> Result<Outcome, TestCaseError> {
    take_largest();
    let (tx, rx) = mpsc::channel();
    let r = root.to_path_buf();
    std::thread::spawn(move || {
        let out = std::panic::catch_unwind(|| match target.read(&r) {
            Ok(ds) => Ok(inconsistency(&ds)),
            Err(e) => Err(format!("{e:#}")),
        });
        let _ = tx.send(out.map_err(|e| panic_message(&*e)));
    });
    let outcome = match rx.recv_timeout(CASE_TIME_LIMIT) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(msg)) => return Err(TestCaseError::fail(format!("the reader panicked: {msg}"))),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            return Err(TestCaseError::fail(format!(
                "the reader did not return within {CASE_TIME_LIMIT:?} (hang)"
            )))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            return Err(TestCaseError::fail("the reader thread died"))
        }
    };
    let largest = take_largest();
    prop_assert!(
        largest <= ALLOC_LIMIT,
        "an allocation of {largest} bytes (limit {ALLOC_LIMIT}) reading {}; outcome: {outcome:?}",
        mutated.display()
    );
    match &outcome {
        Ok(Some(problem)) => {
            return Err(TestCaseError::fail(format!(
                "the reader returned an inconsistent dataset: {problem}"
            )))
        }
        Ok(None) => {}
        Err(msg) => prop_assert!(
            msg.contains(&mutated.display().to_string()),
            "the error does not name {}:\n{msg}",
            mutated.display()
        ),
    }
    Ok(outcome)
}

fn cases_from_env(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fuzz(target: Target, default_cases: u32) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fixture = target.fixture();
    // The unmutated root reads, so mutations start from a valid dataset.
    {
        let dir = tempfile::tempdir().unwrap();
        let clean = Case {
            file: any::<Index>()
                .new_tree(&mut TestRunner::deterministic())
                .unwrap()
                .current(),
            before_gzip: true,
            mutations: Vec::new(),
        };
        let mutated = write_root_at(dir.path(), &fixture, 0, &clean);
        match check(target, dir.path(), &mutated).unwrap() {
            Ok(None) => {}
            other => panic!("the valid {} root does not read: {other:?}", target.name()),
        }
    }

    let cases = cases_from_env(default_cases);
    let (ran, read_ok) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let started = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/proptest-regressions/fuzz_readers.txt"
        )))),
        max_shrink_time: 120_000,
        ..Config::default()
    });
    let result = runner.run(&case(target), |case| {
        ran.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::tempdir().unwrap();
        let mutated = write_root(dir.path(), &fixture, &case);
        let outcome = check(target, dir.path(), &mutated)?;
        if outcome.is_ok() {
            read_ok.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    println!(
        "fuzz_readers {}: {cases} cases {} ({} reads incl. persisted regressions and shrinking, \
         {} still readable), {:.1} s",
        target.name(),
        if result.is_ok() { "passed" } else { "FAILED" },
        ran.load(Ordering::Relaxed),
        read_ok.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{} reader: {e}", target.name());
    }
}

#[test]
fn fuzz_idx() {
    fuzz(Target::Idx, 2000);
}

#[test]
fn fuzz_idx_gz() {
    fuzz(Target::IdxGz, 1000);
}

#[test]
fn fuzz_cifar10() {
    fuzz(Target::Cifar10, 500);
}

#[test]
fn fuzz_cifar100() {
    fuzz(Target::Cifar100, 500);
}

#[test]
fn fuzz_image_folder() {
    fuzz(Target::ImageFolder, 400);
}

/// The gzip helper round-trips (the `.gz` targets mutate real gzip streams).
#[test]
fn gzip_roundtrip() {
    use std::io::Read;
    let mut out = Vec::new();
    GzDecoder::new(gzip(b"abc").as_slice())
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, b"abc");
}

// ---------------------------------------------------------------------------------------------
// Regression tests: the exact minimized inputs of bugs the fuzzer found.

/// Write `target`'s valid root with the file `name` replaced by `bytes` (for `.gz` files: the
/// content before compression), read it under the fuzz properties and return the error text.
fn read_with(target: Target, name: &str, bytes: Vec<u8>) -> String {
    read_with_all(target, &[(name, bytes)])
}

/// [`read_with`] replacing several files; the error must name the first.
fn read_with_all(target: Target, replace: &[(&str, Vec<u8>)]) -> String {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fixture = target.fixture();
    for (name, bytes) in replace {
        let slot = fixture.files.iter_mut().find(|(n, _)| n == name).unwrap();
        slot.1 = bytes.clone();
    }
    let dir = tempfile::tempdir().unwrap();
    let no_mutation = Case {
        file: any::<Index>()
            .new_tree(&mut TestRunner::deterministic())
            .unwrap()
            .current(),
        before_gzip: true,
        mutations: Vec::new(),
    };
    let named = fixture
        .files
        .iter()
        .position(|(n, _)| *n == replace[0].0)
        .unwrap();
    let path = write_root_at(dir.path(), &fixture, named, &no_mutation);
    match check(target, dir.path(), &path) {
        Ok(Err(msg)) => msg,
        other => panic!("expected an error naming {}, got {other:?}", path.display()),
    }
}

/// Bug 2 (fuzzer, IDX and IDX.gz): a header saying 0 columns with no data passed the size check
/// (2 · 2 · 0 = 0 bytes): images without pixels were returned, and the train/test size mismatch
/// that followed named only the root directory. Minimized: `LyingIdxHeader { dims: [None, None,
/// Some(0)], keep: Bytes(0) }` on `t10k-images-idx3-ubyte`.
#[test]
fn regression_idx_zero_width_images_are_rejected_naming_the_file() {
    for target in [Target::Idx, Target::IdxGz] {
        let name = if target == Target::Idx {
            "t10k-images-idx3-ubyte"
        } else {
            "t10k-images-idx3-ubyte.gz"
        };
        let err = read_with(target, name, idx_bytes(&[2, 2, 0], &[]));
        assert!(err.contains("holds images of 2×0 pixels"), "{err}");
    }
}

/// Bug 2, second half: consistent headers of other sizes name both image files.
#[test]
fn regression_idx_train_test_size_mismatch_names_both_files() {
    let err = read_with(
        Target::Idx,
        "t10k-images-idx3-ubyte",
        idx_bytes(&[2, 3, 2], &[7; 12]),
    );
    assert!(
        err.contains("train-images-idx3-ubyte are 2×3")
            && err.contains("t10k-images-idx3-ubyte are 3×2"),
        "{err}"
    );
}

/// Bug 3 (found reading the IDX code for bug 2; the fuzzer's lying headers include 2³¹): the
/// size check multiplied the dimensions in wrapping arithmetic, so four images of 2³¹×2³¹ pixels
/// (2⁶⁴ bytes, 0 after wrapping) "matched" an empty file and were returned without data.
#[test]
fn regression_idx_header_product_overflow_is_rejected() {
    let err = read_with(
        Target::Idx,
        "train-images-idx3-ubyte",
        idx_bytes(&[4, 0x8000_0000, 0x8000_0000], &[]),
    );
    assert!(err.contains("promises more than 2^64"), "{err}");
}

/// An IDX train split of zero images is refused (the fuzzer's consistency property).
#[test]
fn regression_idx_empty_train_split_is_rejected() {
    let err = read_with_all(
        Target::Idx,
        &[
            ("train-images-idx3-ubyte", idx_bytes(&[0, 2, 3], &[])),
            ("train-labels-idx1-ubyte", idx_bytes(&[0], &[])),
        ],
    );
    assert!(err.contains("holds no images"), "{err}");
}

/// Bug 4 (fuzzer, image-folder): image headers promising far more pixels than the file holds
/// were decoded anyway (the JPEG decoder fills missing data in):
/// - a 6×4 grayscale JPEG whose SOF says 16385×4096 (minimized: `ImageDims { width: 333463553,
///   height: 4096, fix_crc: false }` on `train/dog/d.jpeg`; a JPEG takes the low 16 bits) made
///   the decoder allocate and fill 64 MiB before the size mismatch was noticed;
/// - the same file saying 12923×37637 (`ImageDims { width: 631386747, height: 645370629,
///   fix_crc: true }`, found again with the per-target strategies) decoded 486 MB for over 5 s:
///   a hang;
/// - and a PNG whose IHDR (CRC fixed) says 16385×4096.
#[test]
fn regression_image_header_larger_than_the_file_is_rejected_before_decoding() {
    let fixture = Target::ImageFolder.fixture();
    for (name, width, height, fix_crc, says) in [
        ("train/dog/d.jpeg", 333463553, 4096, false, "16385×4096"),
        (
            "train/dog/d.jpeg",
            631386747,
            645370629,
            true,
            "12923×37637",
        ),
        ("train/cat/a.png", 16385, 4096, true, "16385×4096"),
    ] {
        let mut bytes = fixture
            .files
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
            .clone();
        apply(
            &mut bytes,
            &Mutation::ImageDims {
                width,
                height,
                fix_crc,
            },
        );
        let err = read_with(Target::ImageFolder, name, bytes);
        assert!(
            err.contains(&format!("its header says {says} pixels"))
                && err.contains("corrupt header"),
            "{err}"
        );
    }
}
