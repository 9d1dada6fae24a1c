//! Scratch volumes: named volumes carrying the scratch labels, created
//! empty for a stack drill's clones and removed with them.

use super::{Engine, EngineError};

impl Engine {
    /// Creates the empty, labelled named volume `name` (local driver).
    /// Register the name in a guard before calling this.
    pub async fn create_scratch_volume(&self, name: &str) -> Result<(), EngineError> {
        let req = bollard::models::VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(super::network::labels()),
            ..Default::default()
        };
        let doing = format!("creating the scratch volume `{name}`");
        self.control(&doing, self.docker().create_volume(req))
            .await
            .map(|_| ())
    }

    /// Removes the volume (it must be unused); one already gone counts as
    /// removed.
    pub async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        let doing = format!("removing the volume `{name}`");
        let opts = bollard::query_parameters::RemoveVolumeOptions { force: true };
        let call = self.docker().remove_volume(name, Some(opts));
        self.change(&doing, super::CONTROL_TIMEOUT, &[404], call)
            .await
    }
}
