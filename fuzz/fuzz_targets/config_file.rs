//! Any text as `kaelix.toml`: the loader never panics; every diagnostic
//! placed in the file names a line of it; a configuration it accepts prints
//! as TOML that loads back to the same configuration.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use kaelix_config::{ConfigLoader, FixedProbe, Origin, Phase};
use kaelix_server::ServerConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let loader = ConfigLoader::new().with_probe(Arc::new(FixedProbe::default()));
    let file = Path::new("kaelix.toml");
    match loader.load_text::<ServerConfig>(Some(file), Some(text), Phase::Start) {
        Ok(loaded) => {
            let printed = loaded.effective_toml();
            let again = loader
                .load_text::<ServerConfig>(Some(file), Some(&printed), Phase::Start)
                .expect("the effective configuration loads back");
            assert_eq!(again.config, loaded.config);
        }
        Err(e) => {
            assert!(!e.diagnostics.is_empty());
            let lines = text.matches('\n').count() + 1;
            for d in &e.diagnostics {
                if let Origin::File { line, .. } = d.origin {
                    assert!(line <= lines, "{d} is past the end of a {lines}-line file");
                }
            }
        }
    }
});
