//! Black-box tests of the `layerhop` binary: real processes on 127.0.0.1, real files.
//!
//! One test binary (so the binary under test is built once); a temp dir per test; regression
//! tests named after their issue.

mod harness;
mod issue2_foundation;
mod issue2_trust;
mod issue3_bench_lan;
mod issue3_lanes;
mod issue3_site;
mod issue4_engines;
mod issue4_from_registry;
mod issue4_registry;
mod issue4_releases;
mod issue5_bad_peer;
mod issue5_crash_loop;
mod issue5_disk_full;
mod issue5_faults;
mod issue5_limits;
mod issue5_trust;
mod issue6_netns;
mod issue7_operating;
mod issue7_policy;
mod readme_demo;
