//! Stability under mtime change, and property tests (random tar-crate
//! archives, random bytes, mutated archives, mutated columns).

use std::io::{self, Read};

use proptest::prelude::*;
use tar::EntryType;

use super::tests::{check_roundtrip, column, header, pseudo, roundtrip, split_all};
use super::{Columns, join};

// ------------------------------------------- stability under mtime change

/// A layer of 500 entries of all common kinds; `mtime(i)` is entry i's mtime.
fn layer(mtime: &dyn Fn(usize) -> u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut last_file = String::from("usr/share/pkg0/file1");
    for i in 0..500 {
        let m = mtime(i);
        let gnu = i % 3 != 0;
        let dir = format!("usr/share/pkg{}", i / 25);
        let res = match i % 10 {
            0 => b.append_data(
                &mut header(gnu, EntryType::Directory, 0, m),
                format!("{dir}/"),
                io::empty(),
            ),
            1..=4 | 8 => {
                let data = pseudo(i, (i * 131) % 5000);
                last_file = if i % 10 == 8 {
                    format!("{dir}/{}/file{i}", "long-directory-name-".repeat(6))
                } else {
                    format!("{dir}/file{i}")
                };
                let mut h = header(gnu, EntryType::Regular, data.len() as u64, m);
                b.append_data(&mut h, &last_file, &data[..])
            }
            5 => b.append_data(
                &mut header(gnu, EntryType::Regular, 0, m),
                format!("{dir}/empty{i}"),
                io::empty(),
            ),
            6 => b.append_link(
                &mut header(gnu, EntryType::Symlink, 0, m),
                format!("{dir}/link{i}"),
                format!("../t{i}"),
            ),
            7 => b.append_link(
                &mut header(gnu, EntryType::Link, 0, m),
                format!("{dir}/hard{i}"),
                &last_file,
            ),
            _ => {
                let time = format!("{m}.{}", m % 997);
                let res = b.append_pax_extensions([
                    ("mtime", time.as_bytes()),
                    ("SCHILY.xattr.user.origin", format!("pkg{i}").as_bytes()),
                ]);
                res.and_then(|()| {
                    let target = format!("{}/target{i}", "x".repeat(120));
                    b.append_link(
                        &mut header(gnu, EntryType::Symlink, 0, m),
                        format!("{dir}/longlink{i}"),
                        target,
                    )
                })
            }
        };
        res.expect("append");
    }
    b.into_inner().expect("finish")
}

#[test]
fn columns_are_stable_under_mtime_change() {
    let original = layer(&|i| 1_600_000_000 + i as u64 * 7);
    let uniform = layer(&|_| 1_700_000_000);
    let scattered = layer(&|i| 1_700_000_000 + (i as u64 * 7919) % 86_400);
    let (base, content) = roundtrip(&original);
    let dump = std::env::var_os("TARSPLIT_DUMP").map(std::path::PathBuf::from);
    let mut report = format!(
        "{} bytes of tar, {} of content\n",
        original.len(),
        content.len()
    );
    for (label, tar) in [("uniform", &uniform), ("scattered", &scattered)] {
        let (cols, new_content) = roundtrip(tar);
        assert_eq!(new_content, content);
        for (i, name) in Columns::names().iter().enumerate() {
            let (old, new) = (&base.parts()[i], &cols.parts()[i]);
            if !matches!(*name, "mtime" | "paxtime") {
                assert!(old == new, "{label}: column {name} changed");
            }
            if let Some(dir) = &dump {
                std::fs::write(dir.join(format!("{label}-{name}")), new).expect("dump column");
            }
        }
        report += &format!(
            "{label}: mtime {} paxtime {}\n",
            column(&cols, "mtime").len(),
            column(&cols, "paxtime").len()
        );
    }
    for name in Columns::names() {
        report += &format!("{name}: {}\n", column(&base, name).len());
    }
    eprintln!("{report}");
}

#[test]
fn gnu_atime_ctime_only_touch_gnutimes() {
    let build = |t: u64| {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(true, EntryType::Regular, 3, 5);
        let gnu = h.as_gnu_mut().expect("gnu header");
        gnu.set_atime(t);
        gnu.set_ctime(t + 1);
        b.append_data(&mut h, "f", &b"abc"[..]).expect("file");
        b.into_inner().expect("finish")
    };
    let (a, _) = roundtrip(&build(1_600_000_000));
    let (b, _) = roundtrip(&build(1_700_000_000));
    for (i, name) in Columns::names().iter().enumerate() {
        assert_eq!(
            a.parts()[i] == b.parts()[i],
            *name != "gnutimes",
            "column {name}"
        );
    }
}

// ---------------------------------------------------------- property tests

#[derive(Debug, Clone)]
enum Spec {
    File(String, Vec<u8>),
    Dir(String),
    Symlink(String, String),
    Hardlink(String, String),
    Fifo(String),
    Pax(Vec<(String, Vec<u8>)>),
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::collection::vec(b'a'..=b'h', 1..30), 1..7).prop_map(|parts| {
        parts
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
            .join("/")
    })
}

fn spec(max_file: usize) -> impl Strategy<Value = Spec> {
    prop_oneof![
        4 => (path(), prop::collection::vec(any::<u8>(), 0..max_file)).prop_map(|(p, d)| Spec::File(p, d)),
        1 => path().prop_map(Spec::Dir),
        1 => (path(), path()).prop_map(|(p, t)| Spec::Symlink(p, t)),
        1 => (path(), path()).prop_map(|(p, t)| Spec::Hardlink(p, t)),
        1 => path().prop_map(Spec::Fifo),
        1 => prop::collection::vec(
            (prop::sample::select(vec!["mtime", "atime", "comment", "uname", "SCHILY.xattr.a"]),
             prop::collection::vec(any::<u8>(), 0..40)),
            1..4,
        ).prop_map(|r| Spec::Pax(r.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
    ]
}

/// Build a tar with the tar crate; also returns the expected content stream.
fn build(specs: &[Spec], gnu: bool, mtime: u64) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut b = tar::Builder::new(Vec::new());
    let mut content = Vec::new();
    for s in specs {
        match s {
            Spec::File(p, d) => {
                b.append_data(
                    &mut header(gnu, EntryType::Regular, d.len() as u64, mtime),
                    p,
                    &d[..],
                )?;
                content.extend_from_slice(d);
            }
            Spec::Dir(p) => b.append_data(
                &mut header(gnu, EntryType::Directory, 0, mtime),
                p,
                io::empty(),
            )?,
            Spec::Symlink(p, t) => {
                b.append_link(&mut header(gnu, EntryType::Symlink, 0, mtime), p, t)?
            }
            Spec::Hardlink(p, t) => {
                b.append_link(&mut header(gnu, EntryType::Link, 0, mtime), p, t)?
            }
            Spec::Fifo(p) => {
                b.append_data(&mut header(gnu, EntryType::Fifo, 0, mtime), p, io::empty())?
            }
            Spec::Pax(r) => b.append_pax_extensions(r.iter().map(|(k, v)| (k.as_str(), &v[..])))?,
        }
    }
    Ok((b.into_inner()?, content))
}

/// Split must not panic; whatever it accepts must round-trip.
fn split_checked(tar: &[u8]) {
    if let Ok((cols, content)) = split_all(tar) {
        check_roundtrip(tar, &cols, &content);
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
    ]
}

fn mutate(v: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Set(i, b) if !v.is_empty() => {
            let i = i.index(v.len());
            v[i] = *b;
        }
        Mutation::Truncate(i) => v.truncate(i.index(v.len() + 1)),
        Mutation::Insert(i, b) => v.insert(i.index(v.len() + 1), *b),
        Mutation::Set(..) => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn prop_tar_crate_archives_roundtrip(
        specs in prop::collection::vec(spec(2000), 0..10),
        gnu in any::<bool>(),
        mtime in 0u64..(1 << 33),
        extra in prop::option::of(prop::collection::vec(any::<u8>(), 0..700)),
    ) {
        let Ok((mut tar, content)) = build(&specs, gnu, mtime) else { return Ok(()) };
        if let Some(extra) = extra {
            tar.extend_from_slice(&extra);
        }
        let (cols, got) = roundtrip(&tar);
        prop_assert_eq!(got, content);
        prop_assert_eq!(split_all(&tar).expect("split").0, cols, "deterministic");
    }

    #[test]
    fn prop_random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
        split_checked(&bytes);
    }

    #[test]
    fn prop_mutated_tars_never_panic(
        specs in prop::collection::vec(spec(300), 1..6),
        gnu in any::<bool>(),
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let Ok((mut tar, _)) = build(&specs, gnu, 1_600_000_000) else { return Ok(()) };
        for m in &muts {
            mutate(&mut tar, m);
        }
        split_checked(&tar);
    }

    #[test]
    fn prop_mutated_columns_never_panic(
        specs in prop::collection::vec(spec(300), 1..6),
        gnu in any::<bool>(),
        muts in prop::collection::vec((any::<prop::sample::Index>(), mutation()), 1..6),
    ) {
        let Ok((tar, _)) = build(&specs, gnu, 1_600_000_000) else { return Ok(()) };
        let mut parts = split_all(&tar).expect("split").0.into_parts();
        for (col, m) in &muts {
            let i = col.index(parts.len());
            mutate(&mut parts[i], m);
        }
        if let Ok(cols) = Columns::from_parts(parts) {
            let len = cols.content_len().min(1 << 20);
            let mut content = io::repeat(0x5a).take(len);
            let written = join(&cols, &mut content, io::sink());
            prop_assert!(written.is_ok() || cols.content_len() > len, "{:?}", written);
        }
    }
}
