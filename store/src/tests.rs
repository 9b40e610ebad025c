//! Store tests: chunk files, index rebuild, trust file, blobs.

use super::*;
use crate::blob::{BlobReader, BlobWriter, progress};
use std::io::Read;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _) = Store::open(dir.path()).expect("open");
    (dir, s)
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn put_refuses_bytes_that_do_not_match() {
    let (_d, s) = store();
    let id = ChunkId::of(b"abc");
    assert!(matches!(s.put(&id, b"abd"), Err(Error::Mismatch { .. })));
    assert!(!s.has(&id));
    s.put(&id, b"abc").expect("put");
    assert_eq!(s.get(&id).expect("get").as_deref(), Some(&b"abc"[..]));
}

#[test]
fn damaged_chunk_is_never_returned_and_is_forgotten() {
    let (_d, s) = store();
    let id = ChunkId::of(b"payload");
    s.put(&id, b"payload").expect("put");
    std::fs::write(s.chunk_path(&id), b"pAyload").expect("corrupt");
    assert_eq!(s.get(&id).expect("get"), None);
    assert!(!s.has(&id));
    assert!(!s.chunk_path(&id).exists());
}

#[test]
fn blobs_round_trip_at_every_size() {
    let (_d, s) = store();
    for n in [0usize, 1, 65536, 65537, 300_000, 3_000_000] {
        let data = pseudo_random(n, n as u64);
        let mut w = BlobWriter::new(&s);
        w.add_file(&mut &data[..], n as u64).expect("add");
        let r = w.finish().expect("finish");
        assert_eq!(r.len, n as u64);
        let mut back = Vec::new();
        BlobReader::new(&s, r).expect("reader").read_to_end(&mut back).expect("read");
        assert!(back == data, "size {n}");
        assert!(progress(&s, &[r]).expect("progress").complete());
    }
}

#[test]
fn chunking_is_deterministic_and_per_file() {
    let (_d, a) = store();
    let (_e, b) = store();
    let f1 = pseudo_random(500_000, 1);
    let f2 = pseudo_random(200_000, 2);
    let mut wa = BlobWriter::new(&a);
    wa.add_bytes(&f1).expect("add");
    wa.add_bytes(&f2).expect("add");
    let ra = wa.finish().expect("finish");
    // A different file before f2 must not change f2's chunks.
    let mut wb = BlobWriter::new(&b);
    wb.add_bytes(&pseudo_random(123_457, 3)).expect("add");
    wb.add_bytes(&f2).expect("add");
    wb.finish().expect("finish");
    let mut wa2 = BlobWriter::new(&a);
    wa2.add_bytes(&f1).expect("add");
    wa2.add_bytes(&f2).expect("add");
    assert_eq!(wa2.finish().expect("finish"), ra);
    let mut only_f2 = BlobWriter::new(&a);
    only_f2.add_bytes(&f2).expect("add");
    let r2 = only_f2.finish().expect("finish");
    let p = progress(&b, &[r2]).expect("progress");
    assert!(p.missing.len() <= 1, "f2's data chunks are shared; only its tree root may differ: {p:?}");
}

#[test]
fn progress_reports_missing_then_complete() {
    let (_d, src) = store();
    let (_e, dst) = store();
    let data = pseudo_random(2_000_000, 9);
    let r = blob::write_bytes(&src, &data).expect("write");
    let mut rounds = 0;
    loop {
        let p = progress(&dst, &[r]).expect("progress");
        if p.complete() {
            break;
        }
        for r in p.missing {
            let id = r.root;
            let bytes = src.get(&id).expect("get").expect("present");
            dst.put(&id, &bytes).expect("put");
        }
        rounds += 1;
        assert!(rounds < 10);
    }
    let mut back = Vec::new();
    BlobReader::new(&dst, r).expect("reader").read_to_end(&mut back).expect("read");
    assert!(back == data);
}

#[test]
fn missing_index_is_rebuilt_from_chunk_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = pseudo_random(1_000_000, 4);
    let r = {
        let (s, _) = Store::open(dir.path()).expect("open");
        let r = blob::write_bytes(&s, &data).expect("write");
        s.flush().expect("flush");
        r
    };
    std::fs::remove_dir_all(dir.path().join("index")).expect("rm index");
    // And one damaged chunk file: it must be dropped by the rebuild.
    let victim = ChunkId::of(b"victim");
    let sub = dir.path().join("chunks").join(&victim.to_hex()[..2]);
    std::fs::create_dir_all(&sub).expect("mkdir");
    std::fs::write(sub.join(victim.to_hex()), b"not the victim").expect("write");
    let (s, report) = Store::open(dir.path()).expect("reopen");
    assert!(report.rebuilt);
    assert_eq!(report.chunks_dropped, 1);
    assert!(progress(&s, &[r]).expect("progress").complete());
    // Garbage in place of the index is rebuilt too.
    drop(s);
    std::fs::remove_dir_all(dir.path().join("index")).expect("rm index");
    std::fs::create_dir_all(dir.path().join("index")).expect("mkdir");
    std::fs::write(dir.path().join("index/db"), b"garbage").expect("garbage");
    let (s, report) = Store::open(dir.path()).expect("reopen");
    assert!(report.rebuilt);
    assert!(progress(&s, &[r]).expect("progress").complete());
}

#[test]
fn trust_only_grows_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (s, _) = Store::open(dir.path()).expect("open");
        s.raise_trust("models", 3, 100).expect("raise");
        assert!(matches!(s.raise_trust("models", 3, 100), Err(Error::NotNewer { .. })));
        assert!(matches!(s.raise_trust("models", 2, 100), Err(Error::NotNewer { .. })));
    }
    let (s, _) = Store::open(dir.path()).expect("open");
    assert_eq!(s.trust().versions.get("models"), Some(&3));
    assert_eq!(s.trust().newest_time, 100);
}

#[test]
fn trust_statements_survive_reopen_beside_versions() {
    use layerhop_protocol::{PublisherKey, revocation::RevocationList, rotation::SignedRotation};
    let dir = tempfile::tempdir().expect("tempdir");
    let k0 = PublisherKey::generate().expect("key");
    let k1 = PublisherKey::generate().expect("key");
    let rot = SignedRotation::sign(&k0, k1.public(), 1, 7).expect("sign");
    let list = RevocationList { version: 2, issued_at: 7, devices: vec![[3; 16]], peers: vec![] }.sign(&k0).expect("sign");
    {
        let (s, _) = Store::open(dir.path()).expect("open");
        s.raise_trust("models", 3, 100).expect("raise");
        s.set_trust_statements(vec![rot.clone()], Some(list.clone())).expect("save");
    }
    let (s, _) = Store::open(dir.path()).expect("open");
    let t = s.trust();
    assert_eq!((t.rotations, t.revocations, t.versions.get("models")), (vec![rot], Some(list), Some(&3)));
}

#[test]
fn chunk_files_the_index_lost_are_adopted_not_refetched() {
    let (_d, s) = store();
    let id = ChunkId::of(b"written before the crash");
    s.put(&id, b"written before the crash").expect("put");
    // As after kill -9: the file is on disk, sled never persisted the insert.
    s.chunk_index.remove(id.as_bytes()).expect("remove");
    assert!(s.has(&id));
    assert!(s.chunk_index.contains_key(id.as_bytes()).expect("index"));
    let bad = ChunkId::of(b"torn");
    std::fs::create_dir_all(s.chunk_path(&bad).parent().expect("dir")).expect("mkdir");
    std::fs::write(s.chunk_path(&bad), b"to").expect("write");
    assert!(!s.has(&bad));
}

#[test]
fn batch_puts_verify_each_chunk() {
    let (_d, s) = store();
    let good = b"good chunk".to_vec();
    let batch = vec![
        (ChunkId::of(&good), good.clone()),
        (ChunkId::of(b"claimed"), b"other bytes".to_vec()),
        (ChunkId::of(&good), good.clone()),
    ];
    let r = s.put_batch(&batch);
    assert!(r[0].is_ok() && r[2].is_ok());
    assert!(matches!(r[1], Err(Error::Mismatch { .. })));
    assert!(s.has(&ChunkId::of(&good)));
    assert!(!s.has(&ChunkId::of(b"claimed")));
    assert_eq!(s.get(&ChunkId::of(&good)).expect("get").as_deref(), Some(&good[..]));
}

#[test]
fn staged_chunks_are_found_only_once_committed() {
    let (_d, s) = store();
    let bytes = pseudo_random(70_000, 7);
    let id = ChunkId::of(&bytes);
    assert!(matches!(s.stage(&ChunkId::of(b"claimed"), &bytes), Err(Error::Mismatch { .. })));
    assert!(s.stage(&id, &bytes).expect("stage"));
    assert!(s.stage(&id, &bytes).expect("stage twice"), "a second copy before the commit is still to commit");
    assert!(!s.has(&id), "a staged chunk is not held before its sync");
    assert_eq!(s.adopt_staged().expect("adopt"), 0, "a chunk this process staged is not a crash's leftover");
    assert!(!s.has(&id), "adopting found a chunk before its sync");
    let r = s.commit_staged(&[id, id]).expect("commit");
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    assert!(s.has(&id));
    assert_eq!(s.get(&id).expect("get").as_deref(), Some(&bytes[..]));
    assert!(!s.stage(&id, &bytes).expect("stage held"), "a held chunk is not staged again");
    let records = packs::all_records(s.root()).expect("records");
    assert_eq!(records.len(), 1, "the second copy was appended too");
    assert_eq!(s.chunk_count(), 1);
}

#[test]
fn a_batch_is_staged_in_one_append_and_a_bad_chunk_in_it_refused_alone() {
    let (_d, s) = store();
    let (a, b) = (pseudo_random(70_000, 21), pseudo_random(90_000, 22));
    let (ia, ib) = (ChunkId::of(&a), ChunkId::of(&b));
    let held = pseudo_random(5_000, 23);
    s.put(&ChunkId::of(&held), &held).expect("put");
    let batch: Vec<(ChunkId, &[u8])> = vec![(ia, &a), (ChunkId::of(b"claimed"), &b), (ChunkId::of(&held), &held), (ib, &b), (ia, &a)];
    let r = s.stage_many(&batch).expect("stage_many");
    assert!(matches!(r[..], [Ok(true), Err(Error::Mismatch { .. }), Ok(false), Ok(true), Ok(true)]), "{r:?}");
    assert!(!s.has(&ia) && !s.has(&ib), "staged chunks are not held before their sync");
    let c = s.commit_staged(&[ia, ib]).expect("commit");
    assert!(c.iter().all(|r| r.is_ok()), "{c:?}");
    assert_eq!(s.get(&ia).expect("get").as_deref(), Some(&a[..]));
    assert_eq!(s.get(&ib).expect("get").as_deref(), Some(&b[..]));
    let records = packs::all_records(s.root()).expect("records");
    let ids: Vec<ChunkId> = records.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![ia, ib], "one record per new chunk, in order, the repeated one once");
    assert!(s.stage_many(&[]).expect("an empty batch").is_empty());
}

#[test]
fn a_chunk_verified_lately_is_read_for_peers_without_hashing_and_any_other_read_verifies() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (pseudo_random(60_000, 31), pseudo_random(60_000, 32));
    let (ia, ib) = (ChunkId::of(&a), ChunkId::of(&b));
    // Flip a byte of a record's bytes in place, as a disk that rots would.
    let rot = |root: &Path, id: ChunkId| {
        let r = packs::all_records(root).expect("records").into_iter().find(|r| r.id == id).expect("record");
        let f = std::fs::OpenOptions::new().read(true).write(true).open(root.join("packs").join(format!("{:08}.pack", r.pack))).expect("open pack");
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, r.offset + 100).expect("read");
        f.write_all_at(&[!byte[0]], r.offset + 100).expect("rot");
    };
    {
        let (s, _) = Store::open(dir.path()).expect("open");
        s.stage_many(&[(ia, &a[..]), (ib, &b[..])]).expect("stage");
        s.commit_staged(&[ia, ib]).expect("commit");
        rot(dir.path(), ia);
        let served = s.get_for_peer(&ia).expect("read").expect("held");
        assert_ne!(served, a, "the rotted bytes are what is on disk");
        assert!(!ia.matches(&served), "a chunk staged lately is served as read: the peer verifies it");
        assert_eq!(s.get(&ia).expect("get"), None, "a read for this node verifies and forgets a damaged chunk");
        assert_eq!(s.get_for_peer(&ia).expect("read"), None, "a forgotten chunk is not served");
    }
    rot(dir.path(), ib);
    let (s, _) = Store::open(dir.path()).expect("reopen");
    assert_eq!(s.get_for_peer(&ib).expect("read"), None, "after a restart nothing is trusted: the first read verifies");
}

/// The packs' bytes past the last record's end, for tearing: (path, length).
fn last_pack(root: &Path) -> (PathBuf, u64) {
    let mut packs: Vec<PathBuf> = std::fs::read_dir(root.join("packs")).expect("packs").flatten().map(|e| e.path()).collect();
    packs.sort();
    let p = packs.pop().expect("a pack");
    let len = std::fs::metadata(&p).expect("stat").len();
    (p, len)
}

#[test]
fn chunks_staged_before_a_crash_are_adopted_and_a_torn_record_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committed = pseudo_random(40_000, 10);
    let whole = pseudo_random(50_000, 8);
    let torn = pseudo_random(50_000, 9);
    let pack_len_before_torn = {
        let (s, _) = Store::open(dir.path()).expect("open");
        assert!(s.stage(&ChunkId::of(&committed), &committed).expect("stage"));
        s.commit_staged(&[ChunkId::of(&committed)]).expect("commit");
        assert!(s.stage(&ChunkId::of(&whole), &whole).expect("stage"));
        let len = last_pack(dir.path()).1;
        assert!(s.stage(&ChunkId::of(&torn), &torn).expect("stage"));
        s.flush().expect("flush");
        len
        // The process dies before the commit; a power cut tears the last record.
    };
    let (pack, len) = last_pack(dir.path());
    std::fs::OpenOptions::new().write(true).open(&pack).expect("open pack").set_len(len - 1000).expect("tear");
    let (s, report) = Store::open(dir.path()).expect("reopen");
    assert!(!report.rebuilt);
    assert!(s.has(&ChunkId::of(&committed)));
    assert!(!s.has(&ChunkId::of(&whole)), "staged, not yet adopted");
    assert_eq!(s.adopt_staged().expect("adopt"), 1);
    assert_eq!(s.get(&ChunkId::of(&whole)).expect("get").as_deref(), Some(&whole[..]));
    assert!(!s.has(&ChunkId::of(&torn)));
    assert_eq!(last_pack(dir.path()).1, pack_len_before_torn, "the torn record is cut off");
    // What is staged next goes to a new pack and is found after its commit.
    assert!(s.stage(&ChunkId::of(&torn), &torn).expect("stage again"));
    s.commit_staged(&[ChunkId::of(&torn)]).expect("commit");
    assert_eq!(s.get(&ChunkId::of(&torn)).expect("get").as_deref(), Some(&torn[..]));
    assert_eq!(s.adopt_staged().expect("adopt again"), 0, "nothing is adopted twice");
}

#[test]
fn files_an_earlier_version_staged_are_adopted_if_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let whole = pseudo_random(50_000, 8);
    let torn = pseudo_random(50_000, 9);
    drop(Store::open(dir.path()).expect("open"));
    let incoming = dir.path().join("incoming");
    std::fs::write(incoming.join(ChunkId::of(&whole).to_hex().as_str()), &whole).expect("write");
    let torn_path = incoming.join(ChunkId::of(&torn).to_hex().as_str());
    std::fs::write(&torn_path, &torn[..1000]).expect("tear");
    let (s, _) = Store::open(dir.path()).expect("reopen");
    assert_eq!(s.adopt_staged().expect("adopt"), 1);
    assert_eq!(s.get(&ChunkId::of(&whole)).expect("get").as_deref(), Some(&whole[..]));
    assert!(!s.has(&ChunkId::of(&torn)));
    assert!(!torn_path.exists(), "a torn staged file is deleted");
}

#[test]
fn a_damaged_packed_chunk_is_forgotten_never_returned() {
    let (dir, s) = store();
    let a = pseudo_random(30_000, 11);
    let b = pseudo_random(30_000, 12);
    for x in [&a, &b] {
        assert!(s.stage(&ChunkId::of(x), x).expect("stage"));
    }
    s.commit_staged(&[ChunkId::of(&a), ChunkId::of(&b)]).expect("commit");
    // Flip one byte of `a`'s bytes in the pack, as a failing disk would.
    let rec = packs::all_records(dir.path()).expect("records").into_iter().find(|r| r.id == ChunkId::of(&a)).expect("record of a");
    let (pack, _) = last_pack(dir.path());
    let f = std::fs::OpenOptions::new().write(true).open(&pack).expect("open pack");
    std::os::unix::fs::FileExt::write_all_at(&f, &[a[5] ^ 1], rec.offset + 5).expect("flip");
    assert_eq!(s.get(&ChunkId::of(&a)).expect("get"), None, "damaged bytes were returned");
    assert!(!s.has(&ChunkId::of(&a)), "a damaged chunk is forgotten, so it is fetched again");
    assert_eq!(s.get(&ChunkId::of(&b)).expect("get").as_deref(), Some(&b[..]), "its neighbour is untouched");
    // A pack cut short under an indexed chunk: the chunk is forgotten too, not an error forever.
    f.set_len(std::fs::metadata(&pack).expect("stat").len() - 10).expect("cut");
    assert_eq!(s.get(&ChunkId::of(&b)).expect("get"), None, "a cut record was returned");
    assert!(!s.has(&ChunkId::of(&b)));
}

#[test]
fn packed_chunks_are_found_while_the_index_cannot_be_read() {
    let (_d, s) = store();
    let committed = pseudo_random(20_000, 40);
    let staged = pseudo_random(20_000, 41);
    assert!(s.stage(&ChunkId::of(&committed), &committed).expect("stage"));
    s.commit_staged(&[ChunkId::of(&committed)]).expect("commit");
    assert!(s.stage(&ChunkId::of(&staged), &staged).expect("stage"));
    // sled after failing to write its log (a full disk): every operation fails until reopened.
    s.index_reads_fail.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(s.get(&ChunkId::of(&committed)).expect("get").as_deref(), Some(&committed[..]));
    assert!(s.has(&ChunkId::of(&committed)));
    assert!(!s.has(&ChunkId::of(&staged)), "a staged chunk was found before its sync");
    assert_eq!(s.get(&ChunkId::of(b"never held")).expect("get of an absent chunk"), None);
    s.commit_staged(&[ChunkId::of(&staged)]).expect("commit");
    assert_eq!(s.get(&ChunkId::of(&staged)).expect("get").as_deref(), Some(&staged[..]));
}

#[test]
fn missing_index_is_rebuilt_from_packs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chunks: Vec<Vec<u8>> = (0..20).map(|i| pseudo_random(10_000 + i * 100, 20 + i as u64)).collect();
    {
        let (s, _) = Store::open(dir.path()).expect("open");
        for c in &chunks {
            assert!(s.stage(&ChunkId::of(c), c).expect("stage"));
        }
        s.commit_staged(&chunks.iter().map(|c| ChunkId::of(c)).collect::<Vec<_>>()).expect("commit");
        s.flush().expect("flush");
    }
    // One record damaged in place: dropped by the rebuild, the others kept.
    let rec = packs::all_records(dir.path()).expect("records").into_iter().nth(3).expect("record");
    let (pack, _) = last_pack(dir.path());
    let f = std::fs::OpenOptions::new().write(true).open(&pack).expect("open pack");
    std::os::unix::fs::FileExt::write_all_at(&f, b"X", rec.offset).expect("damage");
    std::fs::remove_dir_all(dir.path().join("index")).expect("rm index");
    let (s, report) = Store::open(dir.path()).expect("reopen");
    assert!(report.rebuilt);
    assert_eq!((report.chunks_kept, report.chunks_dropped), (19, 1));
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(s.has(&ChunkId::of(c)), i != 3, "chunk {i}");
    }
    assert_eq!(s.get(&ChunkId::of(&chunks[7])).expect("get").as_deref(), Some(&chunks[7][..]));
    assert_eq!(s.adopt_staged().expect("adopt"), 0, "a rebuilt index marks every pack as read");
}

#[test]
fn a_hostile_pack_file_is_read_without_harm() {
    // Headers that claim huge lengths, wrong magic, or run past the end: the walk stops there.
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path()).expect("open"));
    let good = pseudo_random(5_000, 30);
    let mut pack = Vec::new();
    pack.extend_from_slice(b"LHC1");
    pack.extend_from_slice(&(good.len() as u32).to_le_bytes());
    pack.extend_from_slice(ChunkId::of(&good).as_bytes());
    pack.extend_from_slice(&good);
    pack.extend_from_slice(b"LHC1");
    pack.extend_from_slice(&u32::MAX.to_le_bytes());
    pack.extend_from_slice(&[7u8; 32]);
    pack.extend_from_slice(&[0u8; 100]);
    std::fs::write(dir.path().join("packs/00000001.pack"), &pack).expect("write");
    let (s, _) = Store::open(dir.path()).expect("open");
    assert_eq!(s.adopt_staged().expect("adopt"), 1);
    assert_eq!(s.get(&ChunkId::of(&good)).expect("get").as_deref(), Some(&good[..]));
    assert_eq!(std::fs::metadata(dir.path().join("packs/00000001.pack")).expect("stat").len(), (packs::HEADER + good.len()) as u64);
}

#[test]
fn a_store_open_elsewhere_is_refused_and_left_intact() {
    let (dir, s) = store();
    let id = ChunkId::of(b"held by the running node");
    s.put(&id, b"held by the running node").expect("put");
    match Store::open(dir.path()) {
        Err(e @ Error::InUse { .. }) => assert!(e.to_string().contains("in use by another process"), "{e}"),
        other => panic!("a locked store was opened: {other:?}"),
    }
    assert!(!dir.path().read_dir().expect("list").flatten().any(|e| e.file_name().to_string_lossy().starts_with("index.damaged")), "the index was moved aside");
    assert_eq!(s.get(&id).expect("get").as_deref(), Some(&b"held by the running node"[..]));
}

#[test]
fn reopening_right_after_a_drop_never_rebuilds() {
    // sled hands its log writes to a background pool whose tasks keep the index file (and its
    // lock) open for a moment after the store is dropped: write before every drop.
    let (dir, mut s) = store();
    let id = ChunkId::of(b"kept");
    s.put(&id, b"kept").expect("put");
    for round in 0..20u32 {
        for i in 0..100u32 {
            let bytes = [round.to_le_bytes(), i.to_le_bytes()].concat();
            s.put(&ChunkId::of(&bytes), &bytes).expect("put");
        }
        drop(s);
        let (again, report) = Store::open(dir.path()).expect("reopen");
        assert!(!report.rebuilt, "round {round}: the index was rebuilt");
        assert!(again.has(&id));
        s = again;
    }
}
