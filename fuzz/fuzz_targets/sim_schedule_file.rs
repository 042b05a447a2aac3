//! Any text handed to `kaelix sim replay --schedule` reaches
//! `ScheduleFile::parse`: it may not panic, and a file it accepts must
//! write back to text that parses to the same file and the same schedule.
#![no_main]

use kaelix_sim::shrink::ScheduleFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(file) = ScheduleFile::parse(text) else { return };
    let again = ScheduleFile::parse(&file.to_json()).expect("a written file parses");
    assert_eq!(again, file);
    assert_eq!(again.schedule().expect("ordered"), file.schedule().expect("ordered"));
});
