//! A Redis archive's tar, as `restore::redis::unpack_entries` unpacks it
//! into a staging folder (after age and zstd: any tar is reachable, so the
//! input is the tar itself). Whatever the archive holds, nothing may land
//! outside the staging folder, and what is inside holds only plain files and
//! folders, without setuid/setgid/sticky bits or group/other write.
//! The folders are made under $TMPDIR (scripts/fuzz points it at /dev/shm).
#![no_main]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fn check_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("the staging folder is readable") {
        let e = e.expect("a staging entry");
        let m = std::fs::symlink_metadata(e.path()).expect("a staging entry's metadata");
        let ft = m.file_type();
        assert!(
            ft.is_file() || ft.is_dir(),
            "{} is a {ft:?}, neither a file nor a folder",
            e.path().display()
        );
        let mode = m.permissions().mode();
        assert_eq!(
            mode & 0o7022,
            0,
            "{} has mode {mode:o}: a special bit or group/other write",
            e.path().display()
        );
        if ft.is_dir() {
            // Readable whatever mode the archive gave it (its mode is
            // checked above).
            let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o700));
            check_tree(&e.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let parent = tempfile::tempdir().expect("a temporary folder");
    let staging = parent.path().join("staging");
    std::fs::create_dir(&staging).expect("the staging folder");
    let mut reader = data;
    let _ = kompose_dr::restore::redis::unpack_entries(&mut reader, &staging);
    // Even after a refusal: nothing beside the staging folder.
    let beside: Vec<_> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        beside,
        vec![std::ffi::OsString::from("staging")],
        "files beside staging"
    );
    check_tree(&staging);
});
