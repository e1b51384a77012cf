//! The `hangfree` command of the Python package (`hangfree._cli`): the command line of
//! `hangfree-cli`, run in this process, so that pip installs one implementation.

use std::ffi::OsString;

use pyo3::prelude::*;

/// Runs the command line `args` (the program name first) and returns its exit status.
/// Workers are started as `worker... __worker`. Blocks until the run ends (the GIL is
/// released); the command line handles Ctrl-C and SIGTERM itself.
#[pyfunction]
pub fn cli_main(py: Python<'_>, args: Vec<OsString>, worker: Vec<OsString>) -> i32 {
    crate::gate::detach(py, || hangfree_cli::main_with(args, worker))
}
