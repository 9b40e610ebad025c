//! The scenario runner end to end on a tiny scenario: real in-process nodes, one release, and
//! the figures the issue asks for (every device converges; a site pays about one copy).

use layerhop_simulations::{run, scenario::Scenario};
use std::path::Path;

#[test]
fn a_tiny_site_converges_and_pays_about_one_copy() {
    let sc = Scenario::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tiny.toml")).expect("scenario loads");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut figures = Vec::new();
    rt.block_on(run::run_scenario(&sc, &run::Options::default(), &mut figures)).expect("the scenario runs and every device converges");
    rt.shutdown_background();
    assert_eq!(figures.len(), 1);
    let site = &figures[0].sites[0];
    println!("{}", serde_json::to_string_pretty(&site.totals).expect("json"));
    assert_eq!(site.totals.devices, 4);
    assert!(site.totals.new_bytes > 1 << 20, "new bytes {}", site.totals.new_bytes);
    assert!(site.totals.amplification <= 1.05, "amplification {} (metered {} / new {})", site.totals.amplification, site.totals.metered_bytes, site.totals.new_bytes);
    assert!(site.totals.chunks_from_peers > 0, "nothing moved over the LAN");
    assert!(site.totals.docker_bytes > site.totals.metered_bytes, "docker baseline {}", site.totals.docker_bytes);
    assert!(site.totals.no_sharing_bytes >= 3 * site.totals.new_bytes, "no-sharing baseline {}", site.totals.no_sharing_bytes);
}
