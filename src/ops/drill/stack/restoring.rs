//! A stack drill's restore: every source of the snapshot into the clones,
//! the scratch volumes and the scratch directory — the restore machinery
//! of the `restore` command, with targets that are all scratch.

use std::time::Instant;

use super::StackRun;
use super::error::StackError;
use crate::model::config::DirectoryLocation;
use crate::model::manifest::Manifest;
use crate::ops::drill::Identities;
use crate::ops::verify::{Check, SourceVerdict};
use crate::repository::Repository;
use crate::restore::plan::Choice;
use crate::restore::{RestoreContext, RestoreOptions, RestoreTargets};

/// Roles first, then databases, Redis, files, directories.
fn order(c: &Choice) -> u8 {
    match c.source.as_str() {
        "postgres/globals" => 0,
        s if s.starts_with("postgres/") => 1,
        "redis" => 2,
        s if s.starts_with("files/") => 3,
        _ => 4,
    }
}

impl StackRun<'_> {
    /// Where each directory source goes: `directories/NAME` under the
    /// scratch directory (its parent made here), noted as the restored copy
    /// of its production volume or path, which the clones bind-mount. (A
    /// restore into a volume other than the recorded one is refused, and
    /// nothing of production may be written: a host directory it is.)
    fn scratch_directories(&mut self) -> Result<(), StackError> {
        let parent = self.dir.join("directories");
        crate::storage::local::create_dir_private(&parent).map_err(|source| StackError::Dir {
            path: parent.clone(),
            source,
        })?;
        for d in &self.config.directories {
            let to = parent.join(&d.name);
            match &d.location {
                DirectoryLocation::Volume { name, .. } => {
                    self.restored
                        .volumes
                        .insert(name.clone(), to.display().to_string());
                }
                DirectoryLocation::Path(p) => {
                    self.restored.paths.insert(p.clone(), to);
                }
            }
        }
        Ok(())
    }

    /// The scratch directory each file source goes to (created), noted as
    /// where its production path's copy is.
    fn scratch_files(&mut self) -> Result<(), StackError> {
        for f in &self.config.files {
            let dir = self.dir.join("files").join(&f.name);
            crate::storage::local::create_dir_private(&dir).map_err(|source| StackError::Dir {
                path: dir.clone(),
                source,
            })?;
            let name = f
                .path
                .file_name()
                .map(ToOwned::to_owned)
                .unwrap_or_else(|| f.name.clone().into());
            self.restored.paths.insert(f.path.clone(), dir.join(name));
        }
        Ok(())
    }

    /// Plans the snapshot's sources and restores each, timed; fails naming
    /// every source that did not come back.
    pub(super) async fn restore_all(
        &mut self,
        repo: &Repository,
        manifest: &Manifest,
        identities: Identities,
    ) -> Result<String, StackError> {
        self.scratch_directories()?;
        self.scratch_files()?;
        let options = RestoreOptions {
            replace: true,
            ..RestoreOptions::default_for(&manifest.id)
        };
        let mut choices = crate::ops::restore::plan(&crate::ops::restore::Request {
            repository: repo,
            snapshots: std::slice::from_ref(manifest),
            sources: &self.drill.sources,
            options: &options,
        })
        .await?;
        choices.sort_by_key(order);
        let targets = RestoreTargets {
            postgres: self.postgres.clone(),
            redis: self.redis.clone(),
            files: self.config.files.clone(),
            directories: Vec::new(),
            config_path: self.config.path.clone(),
            scratch: self.config.scratch.clone(),
        };
        let mut failed = Vec::new();
        for choice in &choices {
            let mut options = options.clone();
            if let Some(name) = choice.source.strip_prefix("files/") {
                options.to = Some(self.dir.join("files").join(name));
            }
            if let Some(name) = choice.source.strip_prefix("directories/") {
                options.to = Some(self.dir.join("directories").join(name));
            }
            let ctx = RestoreContext {
                targets: targets.clone(),
                repository: repo.clone(),
                identities: identities.clone(),
                options: &options,
                redactor: self.config.redactor(),
                progress: false,
                cancel: tokio_util::sync::CancellationToken::new(),
                recoveries: Default::default(),
            };
            let t = Instant::now();
            let single = crate::ops::restore::restore_one(&ctx, choice).await;
            let message = self.config.redactor().scrub(&single.message);
            if !single.ok {
                failed.push((choice.source.clone(), message.clone()));
            }
            self.sources.push(SourceVerdict::new(
                &choice.source,
                t.elapsed().as_secs_f64(),
                vec![Check::new(
                    "restored into the scratch stack",
                    single.ok,
                    message,
                )],
            ));
        }
        if failed.is_empty() {
            Ok(format!("{} source(s) restored", choices.len()))
        } else {
            Err(StackError::Restore(failed))
        }
    }
}
