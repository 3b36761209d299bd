//! `Store::open_url` with credentials from the environment. Its own test
//! binary with one test: it sets environment variables, which tests running
//! in parallel threads of one process must not do.

use sbx_store::{Error, Manifest, Store};
use sbx_testkit::s3::S3Server;

#[test]
fn open_url_reads_credentials_from_the_environment() {
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ] {
        std::env::remove_var(k);
    }
    let server = S3Server::start();
    server.create_bucket("blobs");
    let url = server.url_with_prefix("blobs", "host-a");
    let err = Store::open_url(&url).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");

    std::env::set_var("AWS_ACCESS_KEY_ID", server.access_key());
    std::env::set_var("AWS_SECRET_ACCESS_KEY", server.secret_key());
    let store = Store::open_url(&url).unwrap();
    assert_eq!(
        store.describe(),
        format!("s3://blobs/host-a at {}", server.endpoint())
    );
    let w = store.writer().unwrap();
    let (s, stats) = w.put_stream(&b"hello from the environment"[..]).unwrap();
    assert_eq!(stats.new_chunks, 1);
    let m = Manifest {
        streams: [("s".to_owned(), s.clone())].into(),
        ..Manifest::default()
    };
    w.commit_manifest("m", &m).unwrap();
    drop(w);
    let mut out = Vec::new();
    Store::open_url(&url)
        .unwrap()
        .read_stream(&s, &mut out)
        .unwrap();
    assert_eq!(out, b"hello from the environment");

    // A directory, as a path and as a file:// URL, is the same store.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let a = Store::open_url(path.to_str().unwrap()).unwrap();
    assert_eq!(a.describe(), path.display().to_string());
    let w = a.writer().unwrap();
    w.commit_manifest("local", &Manifest::default()).unwrap();
    drop(w);
    let b = Store::open_url(&format!("file://{}", path.display())).unwrap();
    assert_eq!(b.list_manifests().unwrap(), ["local"]);
}
