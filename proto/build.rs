//! Generates the Rust types of every `.proto` file under `proto/` without a
//! system `protoc`: `protox` parses the files (it bundles the
//! `google/protobuf/*` well-known types), `prost-build` generates the
//! structs, and `pbjson-build` generates serde impls following the
//! protobuf JSON mapping (which is what our YAML config maps onto).

use std::path::{Path, PathBuf};

use prost::Message;

const PROTO_ROOT: &str = "proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let mut files = Vec::new();
    collect_protos(Path::new(PROTO_ROOT), &mut files)?;
    // Sorted so the generated code does not depend on directory order.
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds = protox::compile(&files, [PROTO_ROOT])?;
    let encoded = fds.encode_to_vec();

    // Well-known types come from pbjson-types rather than prost-types, because
    // only the former implement the JSON mapping (e.g. Duration as "1.5s").
    prost_build::Config::new()
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(fds)?;

    // Unknown fields stay errors (we do not call `ignore_unknown_fields`): a
    // misspelt config key must not be silently dropped. Output keeps the
    // proto (snake_case) field names so a config dump reads like the YAML
    // users write; input accepts both spellings regardless.
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .preserve_proto_field_names()
        .build(&[".koukan"])?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
