//! The files source: one file as is, with its mode, owner and mtime in the
//! manifest. When the file is an ACME store (Traefik's acme.json), its
//! certificates' domains and expiry dates go into the facts.
//!
//! Small files (up to [`READ_WHOLE`]) are read once, so the facts and the
//! archive come from the same bytes; larger ones stream.

use std::os::unix::fs::MetadataExt;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncReadExt;

use super::{SourceContext, SourceError, SourceRun, acme, timed};
use crate::model::config::FileConfig;
use crate::model::facts::SourceFacts;
use crate::model::manifest::{ArtifactKind, FileMeta};
use crate::model::source_name::SourceName;
use crate::pipeline;
use crate::storage::keys::artifact_key;

/// Files up to this size are read whole (and inspected for facts).
pub const READ_WHOLE: u64 = 16 * 1024 * 1024;

/// Backs up one file.
pub async fn backup(ctx: &SourceContext, cfg: &FileConfig) -> SourceRun {
    let source = SourceName::File(cfg.name.clone()).to_string();
    timed(async {
        let mut run = SourceRun::failed(&source, ArtifactKind::File, "");
        let result = async {
            let path = &cfg.path;
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(SourceError::io(format!("cannot open {}", path.display())))?;
            let meta = file
                .metadata()
                .await
                .map_err(SourceError::io(format!("cannot stat {}", path.display())))?;
            if !meta.is_file() {
                return Err(SourceError::Data(format!(
                    "{} is not a regular file",
                    path.display()
                )));
            }
            run.captured_at = Some(Utc::now());
            run.file = Some(FileMeta {
                path: path.display().to_string(),
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: DateTime::from_timestamp(meta.mtime(), meta.mtime_nsec() as u32)
                    .unwrap_or_default(),
            });
            let key = artifact_key(&ctx.snapshot, &source, ArtifactKind::File);
            if meta.len() <= READ_WHOLE {
                let mut data = Vec::with_capacity(meta.len() as usize);
                file.read_to_end(&mut data)
                    .await
                    .map_err(SourceError::io(format!("cannot read {}", path.display())))?;
                run.facts = Some(SourceFacts::File {
                    certificates: acme::certificates(&data),
                });
                let encoded = ctx
                    .encode(&key, pipeline::input_from_bytes(Bytes::from(data)))
                    .await?;
                ctx.finish(&key, encoded, Ok(())).await
            } else {
                run.facts = Some(SourceFacts::File { certificates: None });
                let (input, pump) = pipeline::input_from_reader(file);
                let encoded = ctx.encode(&key, input).await;
                let _ = pump.await;
                ctx.finish(&key, encoded?, Ok(())).await
            }
        }
        .await;
        run.result = result.map_err(|e| crate::sources::Failed(e.to_string()));
        run
    })
    .await
}
