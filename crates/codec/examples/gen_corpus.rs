//! Writes the fuzzer's seed corpus: every sample packet of every version, one
//! file each, plus one file per version with all of its samples back to back.
//! Run `cargo run -p fleetmq-codec --example gen_corpus` and commit the result.

#[path = "../tests/common/samples.rs"]
mod samples;

use std::path::Path;

use bytes::BytesMut;
use fleetmq_codec::{encode, ProtocolVersion};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    std::fs::create_dir_all(&dir)?;
    let mut files = 0;
    for (version, tag) in [
        (ProtocolVersion::V3_1, "v3.1"),
        (ProtocolVersion::V3_1_1, "v3.1.1"),
        (ProtocolVersion::V5, "v5"),
    ] {
        let mut stream = BytesMut::new();
        for (i, packet) in samples::samples(version).iter().enumerate() {
            let mut buf = BytesMut::new();
            encode(packet, version, &mut buf)?;
            let name = format!("{tag}-{i:02}-{}", packet.kind().to_lowercase());
            std::fs::write(dir.join(name), &buf)?;
            stream.extend_from_slice(&buf);
            files += 1;
        }
        std::fs::write(dir.join(format!("{tag}-stream")), &stream)?;
        files += 1;
    }
    eprintln!("wrote {files} files to {}", dir.display());
    Ok(())
}
