//! Assembles the Lua scripts. A line `-- @include lib/NAME.lua` in `lua/*.lua` is replaced by the
//! text of that file, so a helper shared by several scripts is written once, while each script
//! Redis receives is still one self-contained text (what `EVAL` and `SCRIPT LOAD` need). The
//! assembled scripts land in `$OUT_DIR/lua/`, where `src/scripts.rs` includes them from.

use std::path::Path;
use std::{env, fs};

fn main() {
    let manifest = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let src = Path::new(&manifest).join("lua");
    let dst = Path::new(&out).join("lua");
    println!("cargo:rerun-if-changed=lua");
    fs::create_dir_all(&dst).expect("create $OUT_DIR/lua");
    let mut names: Vec<_> = fs::read_dir(&src)
        .expect("read lua/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "lua"))
        .collect();
    names.sort();
    for path in names {
        let text = fs::read_to_string(&path).expect("read a script");
        let assembled = assemble(&src, &path, &text);
        let name = path.file_name().expect("a file name");
        fs::write(dst.join(name), assembled).expect("write an assembled script");
    }
}

fn assemble(root: &Path, script: &Path, text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut included = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("-- @include ") {
            let rel = rest.trim();
            if included.iter().any(|seen| seen == rel) {
                continue;
            }
            let lib = fs::read_to_string(root.join(rel))
                .unwrap_or_else(|e| panic!("{}: cannot include {rel}: {e}", script.display()));
            if lib.contains("-- @include ") {
                panic!("{rel}: library files may not include others (keep them flat)");
            }
            out.push_str(&format!("-- [{rel}]\n"));
            out.push_str(&lib);
            if !lib.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("-- [end of {rel}]\n"));
            included.push(rel.to_string());
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
