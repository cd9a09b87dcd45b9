//! The one-shot commands of SPEC §4 besides `run`: `validate`, `test`, `publish`, `topology`
//! the dead-letter commands (`dlq/`) and `destinations`. `runs` (run history) and `reload` sit beside them.
//! Each returns the process exit code: 0 ok, 1 user error, 2 broker or remote unreachable.

pub mod destinations;
pub mod dlq;
mod publish;
pub(crate) mod table;
mod test;
mod topology;
mod validate;

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

pub use self::publish::publish;
pub use self::test::{Unpreviewable, dry_run, preview};
pub use self::topology::topology;
pub use self::validate::validate;

/// Exit code for a user error.
pub const USER_ERROR: u8 = 1;
/// Exit code when the broker or a remote could not be reached.
pub const UNREACHABLE: u8 = 2;

/// Loads the configuration or explains why not (exit 1).
pub fn load_config(path: &Path) -> Result<Config, ExitCode> {
    let required = path != Path::new(crate::DEFAULT_CONFIG);
    Config::load(path, required).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(USER_ERROR)
    })
}
