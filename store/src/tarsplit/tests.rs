//! Round trips of every entry kind and edge case, error cases, and the
//! helpers the property tests share.

use std::io;

use tar::{EntryType, Header};

use super::format::{
    BLOCK, CHKSUM_FIELD, CHKSUM_FORMATS, SIZE_FIELD, canonical_size, format_chksum, header_sum,
    parse_size, pax_record, pax_record_len,
};
use super::*;

// ---------------------------------------------------------------- helpers

pub(super) fn split_all(tar: &[u8]) -> Result<(Columns, Vec<u8>), Error> {
    let mut content = Vec::new();
    let cols = split(tar, |size, r| {
        let before = content.len();
        r.read_to_end(&mut content)?;
        let got = (content.len() - before) as u64;
        assert!(got <= size, "reader yields at most size bytes");
        // Short only when the archive is truncated; split must report that.
        if got < size {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    })?;
    Ok((cols, content))
}

pub(super) fn join_all(cols: &Columns, content: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut r = content;
    let n = join(cols, &mut r, &mut out)?;
    assert_eq!(n, out.len() as u64);
    Ok(out)
}

pub(super) fn check_roundtrip(tar: &[u8], cols: &Columns, content: &[u8]) {
    assert_eq!(cols.content_len(), content.len() as u64);
    let again = Columns::from_parts(cols.clone().into_parts()).expect("own columns validate");
    assert_eq!(&again, cols);
    let out = join_all(&again, content).expect("join of own columns");
    assert!(
        out == tar,
        "round trip differs: {} bytes in, {} out",
        tar.len(),
        out.len()
    );
}

pub(super) fn roundtrip(tar: &[u8]) -> (Columns, Vec<u8>) {
    let (cols, content) = split_all(tar).expect("split accepts");
    check_roundtrip(tar, &cols, &content);
    (cols, content)
}

pub(super) fn column<'a>(cols: &'a Columns, name: &str) -> &'a [u8] {
    let i = Columns::names()
        .iter()
        .position(|n| *n == name)
        .expect("known column");
    &cols.parts()[i]
}

pub(super) fn header(gnu: bool, kind: EntryType, size: u64, mtime: u64) -> Header {
    let mut h = if gnu {
        Header::new_gnu()
    } else {
        Header::new_ustar()
    };
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(mtime);
    h
}

pub(super) fn pseudo(seed: usize, len: usize) -> Vec<u8> {
    let mut x = seed as u64 * 6_364_136_223_846_793_005 + 1_442_695_040_888_963_407;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

/// Append a raw header block, data and zero padding.
fn raw_entry(out: &mut Vec<u8>, h: &[u8; BLOCK], data: &[u8]) {
    out.extend_from_slice(h);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(BLOCK), 0);
}

fn raw_header(name: &str, typeflag: u8, size: u64) -> [u8; BLOCK] {
    let mut h = header(true, EntryType::new(typeflag), size, 1_600_000_000);
    h.set_path(name).expect("short path");
    h.set_cksum();
    *h.as_bytes()
}

fn set_chksum(h: &mut [u8; BLOCK], fmt: u8) {
    let f = format_chksum(fmt, header_sum(h)).expect("checksum fits");
    h[CHKSUM_FIELD].copy_from_slice(&f);
}

fn pax_data(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        format::put_pax_record(&mut out, &[k.as_bytes(), b"=", v]);
    }
    out
}

const END: [u8; 1024] = [0; 1024];

// ------------------------------------------------------------ unit tests

#[test]
fn numeric_fields() {
    assert_eq!(parse_size(b"00000001750\0"), Some(1000));
    assert_eq!(parse_size(b"  1750 \0\0\0\0\0"), Some(1000));
    assert_eq!(parse_size(b"77777777777\0"), Some((8 << 30) - 1));
    assert_eq!(parse_size(b"777777777777"), Some((64 << 30) - 1));
    assert_eq!(parse_size(b"\0\0\0\0\0\0\0\0\0\0\0\0"), None);
    assert_eq!(parse_size(b"0000000008 \0"), None);
    let big = 9u64 << 30;
    assert_eq!(canonical_size(big)[0], 0x80);
    assert_eq!(parse_size(&canonical_size(big)), Some(big));
    assert_eq!(&canonical_size(1000), b"00000001750\0");
    let mut neg = [0xffu8; 12];
    assert_eq!(parse_size(&neg), None);
    neg = [0x80, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(parse_size(&neg), None, "overflowing base-256");
    for n in [0usize, 5, 6, 7, 96, 97, 98, 995, 996, 997] {
        let len = pax_record_len(n);
        let mut rec = Vec::new();
        format::put_pax_record(&mut rec, &[&vec![b'k'; n]]);
        assert_eq!(rec.len(), len);
        let parsed = pax_record(&rec).expect("own record parses");
        assert!(parsed.canonical && parsed.kv.len() == n);
    }
}

#[test]
fn empty_and_trailer_only_archives() {
    for tar in [
        vec![],
        END.to_vec(),
        vec![0; 10240],
        vec![0; 700],
        vec![0; 3],
    ] {
        let (cols, content) = roundtrip(&tar);
        assert!(content.is_empty());
        assert_eq!(cols.entry_count(), 0);
    }
}

#[test]
fn all_entry_kinds_tar_crate() {
    for gnu in [true, false] {
        let mut b = tar::Builder::new(Vec::new());
        let mut expect = Vec::new();
        let long = format!("{}/file.txt", "deep/".repeat(40));
        let long_target = format!("{}/target", "t".repeat(150));
        let mut h = header(gnu, EntryType::Directory, 0, 1);
        b.append_data(&mut h, "dir/", io::empty()).expect("dir");
        for (i, path) in ["dir/a", "dir/empty", long.as_str(), "dir/b"]
            .iter()
            .enumerate()
        {
            let data = if *path == "dir/empty" {
                Vec::new()
            } else {
                pseudo(i, 100 + 700 * i)
            };
            let mut h = header(gnu, EntryType::Regular, data.len() as u64, 2);
            b.append_data(&mut h, path, &data[..]).expect("file");
            expect.extend_from_slice(&data);
        }
        let mut h = header(gnu, EntryType::Symlink, 0, 3);
        b.append_link(&mut h, "dir/sym", "a").expect("symlink");
        let mut h = header(gnu, EntryType::Symlink, 0, 3);
        b.append_link(&mut h, "dir/longsym", &long_target)
            .expect("long symlink");
        let mut h = header(gnu, EntryType::Link, 0, 3);
        b.append_link(&mut h, "dir/hard", "dir/a")
            .expect("hardlink");
        let mut h = header(gnu, EntryType::Link, 0, 3);
        b.append_link(&mut h, &long, &long_target)
            .expect("long hardlink");
        for (kind, name) in [
            (EntryType::Char, "dev/null"),
            (EntryType::Block, "dev/sda"),
            (EntryType::Fifo, "run/fifo"),
        ] {
            let mut h = header(gnu, kind, 0, 4);
            h.set_device_major(8).expect("device");
            h.set_device_minor(1).expect("device");
            b.append_data(&mut h, name, io::empty()).expect("device");
        }
        let tar = b.into_inner().expect("finish");
        let (cols, content) = roundtrip(&tar);
        assert_eq!(content, expect);
        assert!(
            !column(&cols, "longname").is_empty(),
            "GNU long names were exercised"
        );
        assert!(
            column(&cols, "chksum").is_empty(),
            "tar crate checksums recomputed"
        );
        assert!(column(&cols, "padding").is_empty());
        assert!(
            column(&cols, "flags").iter().all(|f| f & 7 == 2),
            "tar crate writes %07o\\0"
        );
        // Without end blocks, and padded to a 10240-byte record.
        roundtrip(&tar[..tar.len() - 1024]);
        let mut padded = tar.clone();
        padded.resize(tar.len().next_multiple_of(10240), 0);
        roundtrip(&padded);
    }
}

#[test]
fn pax_headers_long_names_size_override_and_global() {
    let mut tar = Vec::new();
    let global = pax_data(&[("comment", b"built by test")]);
    raw_entry(
        &mut tar,
        &raw_header("pax_global_header", b'g', global.len() as u64),
        &global,
    );
    let long = "p/".repeat(120) + "name";
    let local = pax_data(&[
        ("path", long.as_bytes()),
        ("linkpath", long.as_bytes()),
        ("mtime", b"1600000000.123456789"),
        (
            "SCHILY.xattr.security.capability",
            b"\x01\x00\x00\x02\0\x20",
        ),
        ("size", b"700"),
    ]);
    raw_entry(
        &mut tar,
        &raw_header("PaxHeaders.0/x", b'x', local.len() as u64),
        &local,
    );
    // The pax size applies across a GNU long name header to the file.
    let gnu_long = b"gnu/long/name\0";
    raw_entry(
        &mut tar,
        &raw_header("././@LongLink", b'L', gnu_long.len() as u64),
        gnu_long,
    );
    let data = pseudo(7, 700);
    raw_entry(&mut tar, &raw_header("short", b'0', 0), &data);
    // A following file without pax uses its own size again.
    raw_entry(&mut tar, &raw_header("next", b'0', 3), b"abc");
    tar.extend_from_slice(&END);
    let (cols, content) = roundtrip(&tar);
    assert_eq!(content, [&data[..], b"abc"].concat());
    assert_eq!(column(&cols, "paxtime"), b"\x141600000000.123456789");
    assert_eq!(cols.entry_count(), 5);
}

#[test]
fn malformed_pax_is_kept_raw() {
    for data in [
        &b"garbage without records"[..],
        b"12 path=x\n",
        b"010 a=bcd\n",
        b"9 nokey\n\n",
    ] {
        let mut tar = Vec::new();
        raw_entry(&mut tar, &raw_header("x", b'x', data.len() as u64), data);
        raw_entry(&mut tar, &raw_header("f", b'0', 4), b"data");
        tar.extend_from_slice(&END);
        let (_, content) = roundtrip(&tar);
        assert_eq!(content, b"data");
    }
}

#[test]
fn invalid_pax_size_falls_back_to_raw_tail() {
    let mut tar = Vec::new();
    let pax = pax_data(&[("size", b"12x")]);
    raw_entry(&mut tar, &raw_header("x", b'x', pax.len() as u64), &pax);
    raw_entry(&mut tar, &raw_header("f", b'0', 4), b"data");
    tar.extend_from_slice(&END);
    let (cols, content) = roundtrip(&tar);
    assert!(content.is_empty());
    assert!(column(&cols, "tail").len() > BLOCK);
}

#[test]
fn checksum_formats_and_bad_checksums() {
    for fmt in 1..=CHKSUM_FORMATS {
        let mut h = raw_header("file", b'0', 5);
        set_chksum(&mut h, fmt);
        let mut tar = Vec::new();
        raw_entry(&mut tar, &h, b"hello");
        let (cols, _) = roundtrip(&tar);
        assert!(
            column(&cols, "chksum").is_empty(),
            "format {fmt} recomputed"
        );
        assert_eq!(column(&cols, "flags")[0] & 7, fmt);
    }
    for bad in [b"1234567\0", b"        ", b"\0\0\0\0\0\0\0\0", b"0001234 "] {
        let mut h = raw_header("file", b'0', 5);
        h[CHKSUM_FIELD].copy_from_slice(bad);
        let mut tar = Vec::new();
        raw_entry(&mut tar, &h, b"hello");
        let (cols, content) = roundtrip(&tar);
        assert_eq!(column(&cols, "chksum"), bad);
        assert_eq!(content, b"hello");
    }
}

#[test]
fn nonzero_padding_and_unused_header_bytes() {
    let mut h = raw_header("name", b'0', 5);
    h[10..20].copy_from_slice(b"after-nul!");
    h[500..512].copy_from_slice(b"junkjunkjunk");
    set_chksum(&mut h, 1);
    let mut tar = Vec::new();
    raw_entry(&mut tar, &h, b"hello");
    tar[BLOCK + 100] = 0xaa;
    let mut gnu = raw_header("gnu", b'5', 0);
    gnu[345..357].copy_from_slice(b"14401234567\0");
    gnu[480..490].copy_from_slice(b"sparsejunk");
    set_chksum(&mut gnu, 2);
    tar.extend_from_slice(&gnu);
    tar.extend_from_slice(&END);
    let (cols, content) = roundtrip(&tar);
    assert_eq!(content, b"hello");
    assert_eq!(column(&cols, "padding").len(), BLOCK - 5);
    assert!(column(&cols, "chksum").is_empty());
    assert_eq!(column(&cols, "gnutimes"), b"\x00\x0b14401234567");
}

#[test]
fn other_entry_data_goes_to_columns() {
    let mut tar = Vec::new();
    raw_entry(&mut tar, &raw_header("dir", b'5', 10), b"dumpdir\0\0\0");
    raw_entry(&mut tar, &raw_header("weird", b'Z', 600), &pseudo(1, 600));
    raw_entry(&mut tar, &raw_header("f", b'7', 2), b"hi");
    let (cols, content) = roundtrip(&tar);
    assert_eq!(content, b"hi");
    assert_eq!(column(&cols, "data").len(), 1 + 10 + 2 + 600);
}

#[test]
fn gnu_sparse_with_extension_blocks() {
    let data = pseudo(5, 1500);
    let mut h = raw_header("sparse", b'S', data.len() as u64);
    h[386..398].copy_from_slice(b"00000000000\0");
    h[398..410].copy_from_slice(b"00000002734\0");
    h[482] = 1;
    h[483..495].copy_from_slice(b"00000100000\0");
    set_chksum(&mut h, 1);
    let mut ext1 = [0u8; BLOCK];
    ext1[0..12].copy_from_slice(b"00000040000\0");
    ext1[504] = 1;
    let ext2 = [0u8; BLOCK];
    // The extension blocks are not counted in the size; the data follows them.
    let mut tar = h.to_vec();
    tar.extend_from_slice(&ext1);
    tar.extend_from_slice(&ext2);
    tar.extend_from_slice(&data);
    tar.resize(tar.len().next_multiple_of(BLOCK), 0);
    raw_entry(&mut tar, &raw_header("after", b'0', 2), b"ok");
    tar.extend_from_slice(&END);
    let (cols, content) = roundtrip(&tar);
    assert_eq!(content, [&data[..], b"ok"].concat());
    assert_eq!(cols.entry_count(), 2);
    assert_eq!(
        column(&cols, "data")[..2],
        [0x80, 0x08],
        "two extension blocks kept"
    );
    // An extension chain that never ends is bounded.
    let mut endless = h.to_vec();
    for _ in 0..(MAX_META_RECORD / BLOCK + 1) {
        endless.extend_from_slice(&ext1);
    }
    assert!(matches!(split_all(&endless), Err(Error::TooLarge { .. })));
}

#[test]
fn base256_and_large_sizes() {
    let data = pseudo(3, 1000);
    let mut h = raw_header("b256", b'0', 0);
    h[SIZE_FIELD].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x03, 0xe8]);
    set_chksum(&mut h, 1);
    let mut tar = Vec::new();
    raw_entry(&mut tar, &h, &data);
    tar.extend_from_slice(&END);
    let (cols, content) = roundtrip(&tar);
    assert_eq!(content, data);
    assert_eq!(
        column(&cols, "size").len(),
        12,
        "non-canonical size stored raw"
    );

    // Huge sizes are parsed (and streamed): the archive is then too short.
    for size_field in [*b"77777777777\0", canonical_size(9 << 30)] {
        let mut h = raw_header("huge", b'0', 0);
        h[SIZE_FIELD].copy_from_slice(&size_field);
        let mut tar = h.to_vec();
        tar.extend_from_slice(&[1; 100]);
        let err = split(&tar[..], |_, _| Ok(())).expect_err("truncated");
        assert!(matches!(err, Error::Truncated { offset: 612 }), "{err}");
    }
}

#[test]
fn trailing_garbage_and_raw_tail() {
    let mut tar = Vec::new();
    raw_entry(&mut tar, &raw_header("f", b'0', 3), b"abc");
    let base = tar.clone();
    tar.extend_from_slice(&END);
    tar.extend_from_slice(b"trailing garbage, not block aligned");
    let (cols, content) = roundtrip(&tar);
    assert_eq!(content, b"abc");
    assert_eq!(
        column(&cols, "tail")[..2],
        [0x80, 0x08],
        "1024 zeros counted"
    );
    // A block that is not a header: everything from there on is raw.
    let mut tar = base;
    tar.extend_from_slice(&[b'Z'; BLOCK]);
    raw_entry(&mut tar, &raw_header("g", b'0', 3), b"def");
    let (cols, content) = roundtrip(&tar);
    assert_eq!(content, b"abc");
    assert_eq!(cols.entry_count(), 1);
}

#[test]
fn truncation_is_an_error_naming_the_offset() {
    let mut tar = Vec::new();
    raw_entry(&mut tar, &raw_header("f", b'0', 1000), &pseudo(1, 1000));
    raw_entry(&mut tar, &raw_header("l", b'L', 10), b"long/name\0");
    tar.extend_from_slice(&END);
    for cut in [100, 512 + 500, 512 + 1010, 1536 + 7, 1536 + 512 + 5] {
        match split_all(&tar[..cut]) {
            Err(Error::Truncated { offset }) => assert_eq!(offset, cut as u64),
            other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
        }
    }
    // Cuts at an entry boundary or inside the end blocks are complete archives.
    for cut in [1536, 2048 + 512, 2048 + 700] {
        roundtrip(&tar[..cut]);
    }
}

#[test]
fn callback_may_read_partially_or_fail() {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..4 {
        let data = pseudo(i, 3000 + i);
        let mut h = header(true, EntryType::Regular, data.len() as u64, 9);
        b.append_data(&mut h, format!("f{i}"), &data[..])
            .expect("file");
    }
    let tar = b.into_inner().expect("finish");
    let (full, _) = split_all(&tar).expect("split");
    let mut calls = Vec::new();
    let lazy = split(&tar[..], |size, r| {
        calls.push(size);
        let mut three = [0u8; 3];
        r.read_exact(&mut three)
    })
    .expect("partial reads are drained");
    assert_eq!(lazy, full);
    assert_eq!(calls, [3000, 3001, 3002, 3003]);
    let err = split(&tar[..], |_, _| Err(io::Error::other("disk full"))).expect_err("fails");
    assert!(matches!(err, Error::Io(_)));
}

#[test]
fn oversized_metadata_is_refused() {
    let mut tar = raw_header("././@LongLink", b'L', 2 << 20).to_vec();
    tar.extend_from_slice(&[b'a'; 4096]);
    let err = split_all(&tar).expect_err("too large");
    assert!(
        matches!(
            err,
            Error::TooLarge {
                what: "GNU long name data",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn from_parts_validates() {
    let mut tar = Vec::new();
    raw_entry(&mut tar, &raw_header("f", b'0', 3), b"abc");
    tar.extend_from_slice(&END);
    let (cols, _) = split_all(&tar).expect("split");
    let parts = cols.into_parts();
    assert!(matches!(
        Columns::from_parts(parts[1..].to_vec()),
        Err(Error::ColumnCount {
            expected: 26,
            found: 25
        })
    ));
    let mut bad = parts.clone();
    bad[0] = vec![2];
    assert!(matches!(
        Columns::from_parts(bad),
        Err(Error::MalformedColumns {
            column: "version",
            ..
        })
    ));
    let mut bad = parts.clone();
    bad[4].push(b'0');
    assert!(matches!(
        Columns::from_parts(bad),
        Err(Error::MalformedColumns { column: "mode", .. })
    ));
    let mut bad = parts.clone();
    bad[3].pop();
    assert!(matches!(
        Columns::from_parts(bad),
        Err(Error::MalformedColumns { column: "name", .. })
    ));
    let ok = Columns::from_parts(parts).expect("valid");
    let mut out = Vec::new();
    let err = join(&ok, &mut &b"ab"[..], &mut out).expect_err("short content");
    assert!(
        matches!(
            err,
            Error::ContentShort {
                expected: 3,
                got: 2
            }
        ),
        "{err}"
    );
    assert_eq!(Columns::names().len(), 26);
}
