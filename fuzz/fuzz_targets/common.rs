//! A scratch store and directory shared by the import targets, recreated every few thousand
//! runs so the chunks that fuzz inputs import do not fill the disk.

use layerhop_store::Store;
use std::path::Path;
use std::sync::Mutex;

pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub store: Store,
    runs: u32,
}

static SCRATCH: Mutex<Option<Scratch>> = Mutex::new(None);

fn fresh() -> Scratch {
    // RAM-backed when there is one: an import writes every chunk it cuts.
    let base = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm") } else { Path::new("/tmp") };
    let dir = tempfile::Builder::new().prefix("lh-fuzz-").tempdir_in(base).expect("scratch dir");
    let (store, _) = Store::open(&dir.path().join("store")).expect("scratch store");
    store.set_durable(false);
    Scratch { dir, store, runs: 0 }
}

/// Run `f` with the scratch store and a directory for the input's files.
pub fn with_scratch(f: impl FnOnce(&Store, &Path)) {
    let mut guard = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
    if guard.as_ref().is_none_or(|s| s.runs >= 2000) {
        *guard = None;
        *guard = Some(fresh());
    }
    let s = guard.as_mut().expect("just set");
    s.runs += 1;
    let input = s.dir.path().join("input");
    let _ = std::fs::remove_dir_all(&input);
    std::fs::create_dir_all(&input).expect("input dir");
    f(&s.store, &input);
}
