//! Issue 4: the node's registry mirror. A device serves the release it fetched over the OCI
//! distribution API: plain HTTP requests (what the API answers, including its errors), skopeo
//! (a real OCI client), and the engine config `mirror-config` writes.
//!
//! Each device listens on `--registry 127.0.0.1:0` and the test reads the bound address from
//! `HOME/registry-addr` (no race between picking a free port and binding it).

use crate::harness::{Cluster, Node, cli, cli_ok, tar_members, wait_for};
use layerhop_node::sample;
use sha2::Digest;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

const CHANNEL: &str = "anomaly-detector";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// One HTTP/1.1 response.
pub(crate) struct Resp {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Resp {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The OCI error code of an error body.
    fn code(&self) -> String {
        self.json()["errors"][0]["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// A minimal HTTP/1.1 client over std::net: one request per connection, `Connection: close`,
/// the path sent exactly as given (so traversal attempts reach the server unnormalized).
pub(crate) fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Resp> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16).map_err(std::io::Error::other)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest = &rest[eol + 2 + n + 2..];
        }
        body = out;
    }
    Ok(Resp { status, headers, body })
}

pub(crate) fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    http(addr, "GET", path, headers).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The address a node's registry listens on.
pub(crate) fn registry_addr(node: &Node) -> String {
    let file = node.home.join("registry-addr");
    wait_for("the registry address", Duration::from_secs(30), || std::fs::read_to_string(&file).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()))
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log()))
}

/// What the test compares against: the original image's diff_ids and config bytes.
pub(crate) struct Original {
    pub(crate) info: sample::ImageInfo,
    pub(crate) config: Vec<u8>,
}

pub(crate) fn original(image: &Path, info: sample::ImageInfo) -> Original {
    let members = tar_members(image);
    let manifest: serde_json::Value = serde_json::from_slice(&members["manifest.json"]).expect("manifest.json");
    let config = members[manifest[0]["Config"].as_str().expect("config name")].clone();
    Original { info, config }
}

/// A seed and one device (registry on an ephemeral port) holding `spec`'s image as v1.
fn cluster_with_image(site: &str, spec: &sample::Spec) -> (Cluster, String, Original) {
    let mut c = Cluster::start(0, site);
    c.add_device_with(site, &["--registry", "127.0.0.1:0"]);
    let image = c.path("image.tar");
    let info = sample::write_docker_save(spec, 0, &image).expect("image");
    assert_eq!(c.publish(CHANNEL, &[&image]), 1);
    c.devices[0].wait_complete(CHANNEL, 1, Duration::from_secs(120));
    let addr = registry_addr(&c.devices[0]);
    let orig = original(&image, info);
    (c, addr, orig)
}

fn sha256_hex(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

#[test]
fn registry_serves_the_release_with_rewritten_manifests() {
    let (c, addr, orig) = cluster_with_image("reg-1", &sample::Spec::small(41));
    let a = addr.as_str();
    let base = get(a, "/v2/", &[]);
    assert_eq!(base.status, 200);
    assert_eq!(base.header("docker-distribution-api-version"), Some("registry/2.0"));

    let m = get(a, &format!("/v2/{CHANNEL}/manifests/v1"), &[("Accept", OCI_MANIFEST)]);
    assert_eq!(m.status, 200, "{}", String::from_utf8_lossy(&m.body));
    assert_eq!(m.header("content-type"), Some(OCI_MANIFEST));
    let digest = m.header("docker-content-digest").expect("digest header").to_owned();
    assert_eq!(digest, sha256_hex(&m.body));
    let v = m.json();
    let layers: Vec<String> = v["layers"].as_array().expect("layers").iter().map(|l| l["digest"].as_str().expect("digest").to_owned()).collect();
    assert_eq!(layers, orig.info.diff_ids);
    for (l, size) in v["layers"].as_array().expect("layers").iter().zip(&orig.info.layer_sizes) {
        assert_eq!(l["mediaType"], "application/vnd.oci.image.layer.v1.tar");
        assert_eq!(l["size"].as_u64(), Some(*size));
    }
    assert_eq!(v["config"]["digest"].as_str(), Some(orig.info.config_digest.as_str()));

    // Stable bytes: the same manifest by `latest`, by `library/` (docker's mirror requests), by
    // digest, and again; HEAD agrees with GET.
    for path in [format!("/v2/{CHANNEL}/manifests/latest"), format!("/v2/library/{CHANNEL}/manifests/v1"), format!("/v2/{CHANNEL}/manifests/{digest}")] {
        let again = get(a, &path, &[("Accept", OCI_MANIFEST)]);
        assert_eq!((again.status, &again.body), (200, &m.body), "{path}");
    }
    let head = http(a, "HEAD", &format!("/v2/{CHANNEL}/manifests/v1"), &[("Accept", OCI_MANIFEST)]).expect("HEAD");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(m.body.len().to_string().as_str()));
    assert_eq!(head.header("docker-content-digest"), Some(digest.as_str()));
    assert!(head.body.is_empty());

    // docker v2 schema 2 when the client prefers it.
    let d = get(a, &format!("/v2/{CHANNEL}/manifests/v1"), &[("Accept", &format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}"))]);
    assert_eq!(d.header("content-type"), Some(DOCKER_MANIFEST));
    assert_eq!(d.json()["layers"][0]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar");
    assert_eq!(d.json()["config"]["mediaType"], "application/vnd.docker.container.image.v1+json");

    // Blobs: the config byte for byte, each layer hashing to its diff_id.
    let config = get(a, &format!("/v2/{CHANNEL}/blobs/{}", orig.info.config_digest), &[]);
    assert_eq!(config.status, 200);
    assert!(config.body == orig.config, "config bytes differ");
    for (diff_id, size) in orig.info.diff_ids.iter().zip(&orig.info.layer_sizes) {
        let l = get(a, &format!("/v2/{CHANNEL}/blobs/{diff_id}"), &[]);
        assert_eq!(l.status, 200);
        assert_eq!(l.header("content-length"), Some(size.to_string().as_str()));
        assert_eq!(l.header("docker-content-digest"), Some(diff_id.as_str()));
        assert_eq!(&sha256_hex(&l.body), diff_id);
    }
    let layer0 = get(a, &format!("/v2/{CHANNEL}/blobs/{}", orig.info.diff_ids[0]), &[]).body;
    let r = get(a, &format!("/v2/{CHANNEL}/blobs/{}", orig.info.diff_ids[0]), &[("Range", "bytes=1000-1999")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some(format!("bytes 1000-1999/{}", layer0.len()).as_str()));
    assert!(r.body == layer0[1000..2000], "range bytes differ");
    let tail = get(a, &format!("/v2/{CHANNEL}/blobs/{}", orig.info.diff_ids[0]), &[("Range", "bytes=-100")]);
    assert!(tail.status == 206 && tail.body == layer0[layer0.len() - 100..]);

    let tags = get(a, &format!("/v2/{CHANNEL}/tags/list"), &[]).json();
    assert_eq!(tags["tags"], serde_json::json!(["latest", "v1"]));
    drop(c);
}

#[test]
fn registry_answers_bad_requests_with_oci_errors() {
    let (c, addr, orig) = cluster_with_image("reg-2", &sample::Spec::small(42));
    let a = addr.as_str();
    let unknown = format!("sha256:{}", "0".repeat(64));
    let size = orig.info.layer_sizes[0];
    // (path, method, status, OCI error code, request headers)
    type Case<'a> = (String, &'a str, u16, &'a str, Vec<(&'a str, String)>);
    let cases: Vec<Case> = vec![
        ("/v2/no-such-channel/manifests/v1".into(), "GET", 404, "NAME_UNKNOWN", vec![]),
        (format!("/v2/no-such-channel/blobs/{unknown}"), "GET", 404, "NAME_UNKNOWN", vec![]),
        (format!("/v2/{CHANNEL}/manifests/v999"), "GET", 404, "MANIFEST_UNKNOWN", vec![]),
        (format!("/v2/{CHANNEL}/manifests/nope"), "GET", 404, "MANIFEST_UNKNOWN", vec![]),
        (format!("/v2/{CHANNEL}/manifests/{unknown}"), "GET", 404, "MANIFEST_UNKNOWN", vec![]),
        (format!("/v2/{CHANNEL}/blobs/{unknown}"), "GET", 404, "BLOB_UNKNOWN", vec![]),
        (format!("/v2/{CHANNEL}/blobs/{unknown}"), "HEAD", 404, "", vec![]),
        (format!("/v2/{CHANNEL}/blobs/sha256:1234"), "GET", 400, "DIGEST_INVALID", vec![]),
        (format!("/v2/{CHANNEL}/blobs/sha256:{}", "Z".repeat(64)), "GET", 400, "DIGEST_INVALID", vec![]),
        (format!("/v2/{CHANNEL}/manifests/sha256:nothex"), "GET", 400, "DIGEST_INVALID", vec![]),
        ("/v2/../../etc/passwd/manifests/v1".into(), "GET", 400, "NAME_INVALID", vec![]),
        (format!("/v2/{CHANNEL}/../../x/blobs/{unknown}"), "GET", 400, "NAME_INVALID", vec![]),
        ("/v2/%2e%2e/%2e%2e/etc/manifests/v1".into(), "GET", 400, "NAME_INVALID", vec![]),
        (format!("/v2/..%2f..%2f{CHANNEL}/manifests/v1"), "GET", 400, "NAME_INVALID", vec![]),
        ("/v2//etc/passwd/manifests/v1".into(), "GET", 400, "NAME_INVALID", vec![]),
        ("/v2/Anomaly-Detector/manifests/v1".into(), "GET", 400, "NAME_INVALID", vec![]),
        (
            format!("/v2/{CHANNEL}/blobs/{}", orig.info.diff_ids[0]),
            "GET",
            416,
            "RANGE_INVALID",
            vec![("Range", format!("bytes={size}-"))],
        ),
        (format!("/v2/{CHANNEL}/manifests/v1"), "PUT", 405, "UNSUPPORTED", vec![]),
        (format!("/v2/{CHANNEL}/blobs/uploads/"), "POST", 405, "UNSUPPORTED", vec![]),
    ];
    for (path, method, status, code, headers) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = http(a, method, path, &h).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(r.status, *status, "{method} {path}: {}", String::from_utf8_lossy(&r.body));
        if !code.is_empty() {
            assert_eq!(r.code(), *code, "{method} {path}");
            assert!(r.json()["errors"][0]["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        if *status == 416 {
            assert_eq!(r.header("content-range"), Some(format!("bytes */{size}").as_str()));
        }
    }
    // The node is still serving after all of that.
    assert_eq!(get(a, &format!("/v2/{CHANNEL}/manifests/v1"), &[]).status, 200);
    drop(c);
}

/// skopeo must be there in CI (.ci/run installs it); elsewhere a missing tool skips the test.
pub(crate) fn have_tool(tool: &str, test: &str) -> bool {
    let found = std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{tool} is required in CI (installed by .ci/run)");
        println!("SKIPPED {test}: {tool} is not installed (apt-get install {tool})");
    }
    found
}

fn skopeo_copy(src: &str, dest: &Path) {
    let out = std::process::Command::new("skopeo")
        // Without --dest-oci-accept-uncompressed-layers skopeo gzips the (uncompressed) layers
        // it writes into an OCI layout, which would hide the digests the mirror served.
        .args(["--insecure-policy", "copy", "--src-tls-verify=false", "--dest-oci-accept-uncompressed-layers", src, &format!("oci:{}:pulled", dest.display())])
        .output()
        .expect("running skopeo");
    assert!(out.status.success(), "skopeo copy {src} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Check an OCI layout skopeo wrote: layer digests are the diff_ids, the config is unchanged.
fn check_layout(dir: &Path, orig: &Original) {
    let blob = |d: &str| std::fs::read(dir.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).expect("blob in layout");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json")).expect("json");
    let manifest: serde_json::Value = serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().expect("digest"))).expect("manifest");
    let layers: Vec<&str> = manifest["layers"].as_array().expect("layers").iter().map(|l| l["digest"].as_str().expect("digest")).collect();
    assert_eq!(layers, orig.info.diff_ids);
    for d in &layers {
        assert_eq!(&sha256_hex(&blob(d)), d);
    }
    let config_digest = manifest["config"]["digest"].as_str().expect("config digest");
    assert_eq!(config_digest, orig.info.config_digest);
    assert!(blob(config_digest) == orig.config, "config changed");
}

#[test]
fn skopeo_copies_through_a_device_by_tag_and_by_digest() {
    if !have_tool("skopeo", "skopeo_copies_through_a_device_by_tag_and_by_digest") {
        return;
    }
    let (c, addr, orig) = cluster_with_image("reg-3", &sample::Spec::small(43));
    let by_tag = c.path("by-tag");
    skopeo_copy(&format!("docker://{addr}/{CHANNEL}:v1"), &by_tag);
    check_layout(&by_tag, &orig);
    let latest = c.path("latest");
    skopeo_copy(&format!("docker://{addr}/{CHANNEL}:latest"), &latest);
    check_layout(&latest, &orig);
    let digest = get(&addr, &format!("/v2/{CHANNEL}/manifests/v1"), &[("Accept", OCI_MANIFEST)]).header("docker-content-digest").expect("digest").to_owned();
    let by_digest = c.path("by-digest");
    skopeo_copy(&format!("docker://{addr}/{CHANNEL}@{digest}"), &by_digest);
    check_layout(&by_digest, &orig);
}

#[test]
fn mirror_config_prints_and_writes_engine_config() {
    let dir = tempfile::Builder::new().prefix("lh-mirror-").tempdir().expect("tempdir");
    let home = dir.path().join("seed");
    let h = home.to_str().expect("utf-8");
    cli_ok(&["init", "--home", h, "--seed", "--registry", "127.0.0.1:5123"]);
    let printed: serde_json::Value = serde_json::from_str(&cli_ok(&["mirror-config", "--home", h, "docker", "--path", "/nonexistent/daemon.json"])).expect("daemon.json");
    assert_eq!(printed, serde_json::json!({"registry-mirrors": ["http://127.0.0.1:5123"], "insecure-registries": ["127.0.0.1:5123"]}));
    let daemon_json = dir.path().join("docker/daemon.json");
    std::fs::create_dir_all(daemon_json.parent().expect("dir")).expect("mkdir");
    std::fs::write(&daemon_json, r#"{"log-level": "warn", "registry-mirrors": ["https://other.mirror"]}"#).expect("write");
    let p = daemon_json.to_str().expect("utf-8");
    cli_ok(&["mirror-config", "--home", h, "docker", "--write", "--path", p]);
    cli_ok(&["mirror-config", "--home", h, "docker", "--write", "--path", p]);
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&daemon_json).expect("read")).expect("json");
    assert_eq!(written["log-level"], "warn");
    assert_eq!(written["registry-mirrors"], serde_json::json!(["https://other.mirror", "http://127.0.0.1:5123"]));
    let certs = dir.path().join("certs.d");
    cli_ok(&["mirror-config", "--home", h, "containerd", "--write", "--path", certs.to_str().expect("utf-8")]);
    let hub = std::fs::read_to_string(certs.join("docker.io/hosts.toml")).expect("docker.io hosts.toml");
    assert!(hub.contains("[host.\"http://127.0.0.1:5123\"]") && hub.contains("\"pull\", \"resolve\""), "{hub}");
    assert!(certs.join("127.0.0.1:5123/hosts.toml").exists());
    // A bad address is refused by init, naming the flag; "off" turns the registry off.
    let bad = cli(&["init", "--home", dir.path().join("bad").to_str().expect("utf-8"), "--seed", "--registry", "localhost"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--registry"));
    let off = dir.path().join("off");
    cli_ok(&["init", "--home", off.to_str().expect("utf-8"), "--seed", "--registry", "off"]);
    let r = cli(&["mirror-config", "--home", off.to_str().expect("utf-8"), "docker"]);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("off"));
}
