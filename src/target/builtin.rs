//! The profiles shipped in `targets/`, compiled in so an installed binary
//! works from any folder. A test checks this list matches the folder.

/// (path relative to `targets/`, contents)
pub const FILES: &[(&str, &str)] = &[
    (
        "base/llama-cpp-cpu.toml",
        include_str!("../../targets/base/llama-cpp-cpu.toml"),
    ),
    (
        "base/android-phone.toml",
        include_str!("../../targets/base/android-phone.toml"),
    ),
    (
        "apple-a17pro-phone.toml",
        include_str!("../../targets/apple-a17pro-phone.toml"),
    ),
    (
        "coral-dev-board.toml",
        include_str!("../../targets/coral-dev-board.toml"),
    ),
    (
        "esp32-s3-8mb.toml",
        include_str!("../../targets/esp32-s3-8mb.toml"),
    ),
    (
        "intel-core-ultra-laptop.toml",
        include_str!("../../targets/intel-core-ultra-laptop.toml"),
    ),
    (
        "jetson-orin-nano-8gb.toml",
        include_str!("../../targets/jetson-orin-nano-8gb.toml"),
    ),
    ("pixel-8.toml", include_str!("../../targets/pixel-8.toml")),
    (
        "rk3588-16gb.toml",
        include_str!("../../targets/rk3588-16gb.toml"),
    ),
    (
        "rpi-zero-2w.toml",
        include_str!("../../targets/rpi-zero-2w.toml"),
    ),
    ("rpi4-4gb.toml", include_str!("../../targets/rpi4-4gb.toml")),
    ("rpi5-8gb.toml", include_str!("../../targets/rpi5-8gb.toml")),
    (
        "snapdragon-8gen3-phone.toml",
        include_str!("../../targets/snapdragon-8gen3-phone.toml"),
    ),
    (
        "x86-avx2-laptop.toml",
        include_str!("../../targets/x86-avx2-laptop.toml"),
    ),
    (
        "x86-avx512-ci.toml",
        include_str!("../../targets/x86-avx512-ci.toml"),
    ),
];

#[cfg(test)]
mod tests {
    #[test]
    fn builtin_list_matches_the_targets_folder() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("targets");
        let mut on_disk = Vec::new();
        for sub in ["", "base"] {
            for entry in std::fs::read_dir(root.join(sub)).unwrap() {
                let p = entry.unwrap().path();
                if p.extension().is_some_and(|x| x == "toml") {
                    let rel = p
                        .strip_prefix(&root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    on_disk.push(rel);
                }
            }
        }
        on_disk.sort();
        let mut listed: Vec<String> = super::FILES.iter().map(|(p, _)| p.to_string()).collect();
        listed.sort();
        assert_eq!(listed, on_disk);
    }
}
