//! The embedded broker's conformance checks on the real executor.

use std::time::Duration;

use kaelix_core::NodeId;
use kaelix_runtime_real::{NodeConfig, RealRuntime};

use crate::support::{executor, temp_dir};

#[test]
fn embedded_broker_conformance() {
    let exec = executor("broker", 2);
    let rt = RealRuntime::start(exec.handle(), NodeConfig::new(NodeId(1), temp_dir("broker"))).unwrap();
    let result = exec.block_on(kaelix_broker::testing::conformance::run(rt));
    assert_eq!(result, Ok(()));
    exec.shutdown(Duration::from_secs(1));
}
