//! Issue 4: the seed publishes straight from an upstream registry. The test runs a real
//! registry server (Debian's `docker-registry`, the reference `distribution` registry) on
//! 127.0.0.1, pushes generated images into it with skopeo (gzip and zstd layers), publishes them
//! with `layerhop publish --from-registry`, and checks that a device's mirror serves the original
//! diff_ids and config; also by digest and from a multi-platform index (`--platform`). Bad input
//! (unknown tag or digest, unreachable host, missing or wrong credentials, no such platform)
//! must fail with a message naming the problem and publish nothing.

use crate::harness::{Cluster, binary, wait_for};
use crate::issue4_registry::{Original, get, have_tool, http, original, registry_addr};
use layerhop_node::sample;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A `docker-registry` process on 127.0.0.1, killed on drop.
struct Upstream {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Upstream {
    /// Start a registry storing under `dir`; with `htpasswd`, every request needs basic auth.
    fn start(dir: &Path, htpasswd: Option<&Path>) -> Upstream {
        std::fs::create_dir_all(dir.join("storage")).expect("mkdir");
        // docker-registry cannot report a port it picked itself, so take a free one and hand it
        // over; a lost race shows as the registry failing to start, with its log.
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let addr = format!("127.0.0.1:{port}");
        let auth = htpasswd.map(|p| format!("auth:\n  htpasswd:\n    realm: layerhop-test\n    path: {}\n", p.display())).unwrap_or_default();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{auth}",
            dir.join("storage").display()
        );
        std::fs::write(dir.join("config.yml"), config).expect("config");
        let log = dir.join("registry.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("starting docker-registry");
        let up = Upstream { child, addr, log };
        wait_for("docker-registry to answer GET /v2/", Duration::from_secs(30), || {
            http(&up.addr, "GET", "/v2/", &[]).ok().filter(|r| r.status == 200 || r.status == 401)
        })
        .unwrap_or_else(|e| panic!("{e}\n--- registry log:\n{}", up.log()));
        up
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Push a docker-save tarball as `repo:tag` with skopeo (`extra`: compression, credentials).
    fn push(&self, archive: &Path, repo_tag: &str, extra: &[&str]) {
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
            .args(extra)
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("docker://{}/{repo_tag}", self.addr))
            .output()
            .expect("running skopeo");
        assert!(out.status.success(), "skopeo push of {repo_tag} failed: {}\n--- registry log:\n{}", String::from_utf8_lossy(&out.stderr), self.log());
    }

    /// The manifest of `repo:tag` as the registry stores it (anonymous registries).
    fn manifest(&self, repo: &str, tag: &str) -> serde_json::Value {
        let accept = format!("{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json");
        let m = get(&self.addr, &format!("/v2/{repo}/manifests/{tag}"), &[("Accept", &accept)]);
        assert_eq!(m.status, 200, "{}", String::from_utf8_lossy(&m.body));
        m.json()
    }

    /// `repo:tag`'s manifest descriptor: media type, digest, size.
    fn descriptor(&self, repo: &str, tag: &str) -> serde_json::Value {
        let accept = format!("{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json");
        let m = get(&self.addr, &format!("/v2/{repo}/manifests/{tag}"), &[("Accept", &accept)]);
        assert_eq!(m.status, 200);
        serde_json::json!({
            "mediaType": m.header("content-type").expect("content type"),
            "digest": m.header("docker-content-digest").expect("digest"),
            "size": m.body.len(),
        })
    }

    /// Push a multi-platform index as `repo:tag` (an HTTP PUT, as any client pushes one).
    fn push_index(&self, repo: &str, tag: &str, manifests: &[serde_json::Value]) {
        use std::io::Read;
        let body = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests }).to_string();
        let mut s = std::net::TcpStream::connect(&self.addr).expect("connect");
        write!(
            s,
            "PUT /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: {}\r\nContent-Type: {OCI_INDEX}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .expect("PUT");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("answer");
        assert!(answer.starts_with("HTTP/1.1 201"), "pushing the index failed: {answer}");
    }

    /// The layer media types of `repo:tag`.
    fn layer_media_types(&self, repo: &str, tag: &str) -> Vec<String> {
        let m = self.manifest(repo, tag);
        m["layers"].as_array().expect("layers").iter().map(|l| l["mediaType"].as_str().expect("media type").to_owned()).collect()
    }

    /// What the registry holds of `repo:tag` pushed from `local`: the same diff_ids, and the
    /// config as stored upstream (skopeo rewrites a docker config as an OCI one when it pushes
    /// zstd layers, which docker's manifest format cannot describe).
    fn original(&self, repo: &str, tag: &str, local: &Original) -> Original {
        let digest = self.manifest(repo, tag)["config"]["digest"].as_str().expect("config digest").to_owned();
        let config = get(&self.addr, &format!("/v2/{repo}/blobs/{digest}"), &[]);
        assert_eq!(config.status, 200);
        let diff_ids: Vec<String> = config.json()["rootfs"]["diff_ids"].as_array().expect("diff_ids").iter().map(|d| d.as_str().expect("id").to_owned()).collect();
        assert_eq!(diff_ids, local.info.diff_ids, "the registry's image has other layers than the pushed one");
        let mut info = local.info.clone();
        info.config_digest = digest;
        Original { info, config: config.body }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `layerhop publish --from-registry URL` on the cluster's seed, with `stdin` and `env`.
fn publish_from(c: &Cluster, channel: &str, url: &str, extra: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(["publish", "--home", c.seed.home_arg(), "--channel", channel, "--from-registry", url]).args(extra);
    cmd.env_remove("LAYERHOP_REGISTRY_USERNAME").env_remove("LAYERHOP_REGISTRY_PASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("layerhop publish");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn publish_ok(c: &Cluster, channel: &str, url: &str, extra: &[&str], stdin: &str, env: &[(&str, &str)]) -> serde_json::Value {
    let out = publish_from(c, channel, url, extra, stdin, env);
    assert!(out.status.success(), "publish --from-registry {url} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("publish prints JSON")
}

/// The publish fails, its message contains every one of `needles`, and nothing was published.
fn publish_fails(c: &Cluster, channel: &str, url: &str, extra: &[&str], stdin: &str, env: &[(&str, &str)], needles: &[&str]) {
    let out = publish_from(c, channel, url, extra, stdin, env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "publish --from-registry {url} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    println!("publish --from-registry {url} {extra:?} fails as it should: {}", err.trim().replace('\n', " "));
    for n in needles {
        assert!(err.contains(n), "the error for {url} does not say {n:?}: {err}");
    }
    let status = c.seed.status().expect("status");
    assert!(!status["releases"].as_array().expect("releases").iter().any(|r| r["channel"] == channel), "{channel} was published: {status}");
    no_leftover_downloads(c);
}

/// Every download directory in the seed's home was removed.
fn no_leftover_downloads(c: &Cluster) {
    let left: Vec<_> = std::fs::read_dir(&c.seed.home).expect("home").flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".from-registry-")).collect();
    assert!(left.is_empty(), "download directories left in the seed's home: {left:?}");
}

/// A device's mirror serves `channel` v`version` with the original diff_ids and config.
fn check_served(c: &Cluster, channel: &str, version: u64, orig: &Original) {
    c.devices[0].wait_complete(channel, version, Duration::from_secs(120));
    let addr = registry_addr(&c.devices[0]);
    let m = get(&addr, &format!("/v2/{channel}/manifests/v{version}"), &[("Accept", OCI_MANIFEST)]);
    assert_eq!(m.status, 200, "{}", String::from_utf8_lossy(&m.body));
    let layers: Vec<String> = m.json()["layers"].as_array().expect("layers").iter().map(|l| l["digest"].as_str().expect("digest").to_owned()).collect();
    assert_eq!(layers, orig.info.diff_ids, "{channel}: served layers are not the original diff_ids");
    assert_eq!(m.json()["config"]["digest"].as_str(), Some(orig.info.config_digest.as_str()), "{channel} v{version}: config digest");
    let config = get(&addr, &format!("/v2/{channel}/blobs/{}", orig.info.config_digest), &[]);
    assert!(config.status == 200 && config.body == orig.config, "{channel}: config differs from the original");
}

fn image(c: &Cluster, name: &str, seed: u64) -> (PathBuf, Original) {
    let path = c.path(name);
    let info = sample::write_docker_save(&sample::Spec::small(seed), 0, &path).expect("image");
    let orig = original(&path, info);
    (path, orig)
}

fn tools(test: &str) -> bool {
    have_tool("docker-registry", test) && have_tool("skopeo", test)
}

#[test]
fn seed_publishes_from_a_registry_gzip_and_zstd() {
    if !tools("seed_publishes_from_a_registry_gzip_and_zstd") {
        return;
    }
    let mut c = Cluster::start(0, "up-1");
    c.add_device_with("up-1", &["--registry", "127.0.0.1:0"]);
    let up = Upstream::start(&c.path("upstream"), None);
    let (gz_tar, gz) = image(&c, "gzip.tar", 71);
    let (zst_tar, zst_local) = image(&c, "zstd.tar", 72);
    up.push(&gz_tar, "e2e/app:v1", &[]);
    up.push(&zst_tar, "e2e/app:zstd", &["--dest-compress-format", "zstd"]);
    // The registry really holds compressed layers of both kinds.
    assert!(up.layer_media_types("e2e/app", "v1").iter().all(|t| t.ends_with("gzip")), "{:?}", up.layer_media_types("e2e/app", "v1"));
    assert!(up.layer_media_types("e2e/app", "zstd").iter().all(|t| t.ends_with("+zstd")), "{:?}", up.layer_media_types("e2e/app", "zstd"));
    let zst = up.original("e2e/app", "zstd", &zst_local);

    let url = format!("http://{}/e2e/app:v1", up.addr);
    let out = publish_ok(&c, "app", &url, &[], "", &[]);
    assert_eq!(out["version"], 1);
    assert_eq!(out["from_registry"]["layers"].as_u64(), Some(gz.info.diff_ids.len() as u64));
    check_served(&c, "app", 1, &gz);
    // The image keeps the name it had upstream: the mirror serves its tag.
    let addr = registry_addr(&c.devices[0]);
    assert_eq!(get(&addr, "/v2/app/manifests/v1", &[]).status, 200);
    let tags = get(&addr, "/v2/app/tags/list", &[]).json();
    assert!(tags["tags"].as_array().expect("tags").iter().any(|t| t == "v1"), "{tags}");

    // Same release contents as publishing the image from its file: the same manifest bytes.
    assert_eq!(c.publish("app-file", &[&gz_tar]), 1);
    c.devices[0].wait_complete("app-file", 1, Duration::from_secs(120));
    let from_registry = get(&addr, "/v2/app/manifests/v1", &[("Accept", OCI_MANIFEST)]);
    let from_file = get(&addr, "/v2/app-file/manifests/v1", &[("Accept", OCI_MANIFEST)]);
    assert!(from_registry.body == from_file.body, "manifests differ:\n{}\n{}", String::from_utf8_lossy(&from_registry.body), String::from_utf8_lossy(&from_file.body));

    // zstd layers, as the channel's next version.
    let out = publish_ok(&c, "app", &format!("http://{}/e2e/app:zstd", up.addr), &[], "", &[]);
    assert_eq!(out["version"], 2);
    check_served(&c, "app", 2, &zst);
    no_leftover_downloads(&c);

    // A multi-platform index: the gzip image as linux/amd64, the zstd one as linux/arm64.
    let platform = |os: &str, arch: &str, tag: &str| {
        let mut d = up.descriptor("e2e/app", tag);
        d["platform"] = serde_json::json!({ "os": os, "architecture": arch });
        d
    };
    up.push_index("e2e/app", "multi", &[platform("linux", "amd64", "v1"), platform("linux", "arm64", "zstd")]);
    let multi = format!("http://{}/e2e/app:multi", up.addr);
    publish_ok(&c, "multi", &multi, &["--platform", "linux/arm64"], "", &[]);
    check_served(&c, "multi", 1, &zst);
    // By default, linux on this machine's architecture.
    let host = match std::env::consts::ARCH {
        "x86_64" => Some(&gz),
        "aarch64" => Some(&zst),
        _ => None,
    };
    if let Some(expected) = host {
        publish_ok(&c, "multi", &multi, &[], "", &[]);
        check_served(&c, "multi", 2, expected);
    }
    // By digest (no tag: the image has no name of its own, the mirror serves it as v<N>).
    let digest = up.descriptor("e2e/app", "v1")["digest"].as_str().expect("digest").to_owned();
    publish_ok(&c, "by-digest", &format!("http://{}/e2e/app@{digest}", up.addr), &[], "", &[]);
    check_served(&c, "by-digest", 1, &gz);
    let bad_digest = format!("sha256:{}", "0".repeat(64));
    publish_fails(&c, "ghost", &format!("http://{}/e2e/app@{bad_digest}", up.addr), &[], "", &[], &["unknown"]);
    publish_fails(&c, "ghost", &multi, &["--platform", "linux/s390x"], "", &[], &["linux/s390x", "linux/amd64, linux/arm64", "--platform"]);

    // Bad input: a clear error, nothing published.
    publish_fails(&c, "ghost", &format!("http://{}/e2e/app:nope", up.addr), &[], "", &[], &["e2e/app:nope", "unknown"]);
    publish_fails(&c, "ghost", &format!("http://{}/e2e/none:v1", up.addr), &[], "", &[], &["e2e/none:v1", "unknown"]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    publish_fails(&c, "ghost", &format!("http://127.0.0.1:{closed}/e2e/app:v1"), &[], "", &[], &["cannot reach the registry", "refused"]);
    publish_fails(&c, "ghost", &format!("{}/e2e/app:v1", up.addr), &[], "", &[], &["https://"]);
    publish_fails(&c, "ghost", &url, &["--platform", "linux"], "", &[], &["--platform"]);
    drop(up);
}

#[test]
fn seed_publishes_from_a_registry_with_basic_auth() {
    if !tools("seed_publishes_from_a_registry_with_basic_auth") {
        return;
    }
    let mut c = Cluster::start(0, "up-2");
    c.add_device_with("up-2", &["--registry", "127.0.0.1:0"]);
    let htpasswd = c.path("htpasswd");
    // docker-registry accepts only bcrypt entries.
    std::fs::write(&htpasswd, format!("fleet:{}\n", bcrypt::hash("s3cret-pass", 6).expect("bcrypt"))).expect("htpasswd");
    let up = Upstream::start(&c.path("upstream"), Some(&htpasswd));
    let (tar, orig) = image(&c, "image.tar", 73);
    up.push(&tar, "private/app:v3", &["--dest-creds", "fleet:s3cret-pass"]);
    assert_eq!(http(&up.addr, "GET", "/v2/private/app/manifests/v3", &[]).expect("GET").status, 401, "the registry does not require auth");

    let url = format!("http://{}/private/app:v3", up.addr);
    publish_fails(&c, "private", &url, &[], "", &[], &["requires credentials", "--password-stdin"]);
    publish_fails(&c, "private", &url, &[], "", &[("LAYERHOP_REGISTRY_USERNAME", "fleet"), ("LAYERHOP_REGISTRY_PASSWORD", "wrong")], &["refused", "fleet"]);
    publish_fails(&c, "private", &url, &["--username", "fleet"], "", &[], &["password"]);
    // The password from standard input, then from the environment.
    let out = publish_ok(&c, "private", &url, &["--username", "fleet", "--password-stdin"], "s3cret-pass\n", &[]);
    assert_eq!(out["version"], 1);
    check_served(&c, "private", 1, &orig);
    let out = publish_ok(&c, "private", &url, &[], "", &[("LAYERHOP_REGISTRY_USERNAME", "fleet"), ("LAYERHOP_REGISTRY_PASSWORD", "s3cret-pass")]);
    assert_eq!(out["version"], 2);
    check_served(&c, "private", 2, &orig);
    no_leftover_downloads(&c);
    // Registry credentials in the environment do not get in the way of publishing files.
    let files = Command::new(binary())
        .args(["publish", "--home", c.seed.home_arg(), "--channel", "files"])
        .arg(&tar)
        .env("LAYERHOP_REGISTRY_USERNAME", "fleet")
        .env("LAYERHOP_REGISTRY_PASSWORD", "s3cret-pass")
        .output()
        .expect("layerhop publish");
    assert!(files.status.success(), "{}", String::from_utf8_lossy(&files.stderr));
    drop(up);
}
