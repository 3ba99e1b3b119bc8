//! The object-store contract (`src/store/contract.rs`) against a real S3 server: the same
//! cases the in-memory store passes in the unit tests, so the fake cannot drift from S3. The
//! contract is compiled for tests only: this file includes it by path, and maps the names it
//! uses (`crate::store`, `crate::upload`) to the library's.

mod common;

mod store {
    pub use bucketfs::store::*;
}
mod upload {
    pub use bucketfs::upload::MIN_PART_SIZE;
}
#[path = "../src/store/contract.rs"]
mod contract;

use bucketfs::config::StoreConfig;
use bucketfs::store::s3::S3Store;
use common::Bucket;

#[test]
fn seaweedfs_keeps_the_store_contract() {
    let b = Bucket::new("contract");
    let server = common::server();
    // The store reads credentials from the AWS chain, as the daemon does.
    std::env::set_var("AWS_ACCESS_KEY_ID", common::ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY);
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::remove_var("AWS_PROFILE");
    let mut config = StoreConfig::new(b.name.clone());
    config.endpoint_url = Some(server.endpoint.clone());
    config.force_path_style = true;
    config.region = Some("us-east-1".into());
    let broken = server.rt.block_on(async {
        let store = S3Store::new(&config).await;
        contract::run_all(&store, "contract/").await
    });
    assert!(broken.is_empty(), "{broken:#?}");
}
