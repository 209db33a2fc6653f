//! Test support for encore's Arroyo UDF plugins: load a built plugin dylib and call it exactly
//! the way an Arroyo worker does, so that the tests exercise the real ABI rather than the Rust
//! function behind it.
//!
//! ```text
//!  test (host)                                  lib<udf>.so (plugin)
//!  Vec<ArrayData> ── FfiArrays::from_vec ──▶ __run(FfiArrays) ── into_vec, #[udf] fn per row
//!  ArrayData ◀── from_ffi ── RunResult::Ok(FfiArraySchema)  (or RunResult::Err after a panic)
//! ```
//!
//! Ownership across the boundary follows `arroyo-udf-common`: the argument vector is leaked by
//! the host and freed by the plugin; the result's buffers are released by a callback that lives
//! in the plugin. A [`Plugin`] therefore keeps its library in an `Arc`, and every [`Output`]
//! holds a clone of it, so the library stays loaded while any result is alive.
//!
//! Locating the dylib: cargo builds a cdylib crate's library before its integration tests and
//! puts it in the profile directory (`target/<profile>/lib<name>.so`, with a copy in `deps/`).
//! The test executable lives in `target/<profile>/deps/`, so [`Plugin::load`] searches from the
//! executable's own path instead of guessing the target directory or profile.
//!
//! This crate uses `unsafe` (dlopen, calling a foreign function, importing FFI arrays); every
//! block states the invariant it relies on.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use arroyo_udf_plugin::arrow;
use arroyo_udf_plugin::arrow::array::{make_array, Array, ArrayData, ArrayRef};
use arroyo_udf_plugin::arrow::ffi::from_ffi;
use arroyo_udf_plugin::{FfiArraySchema, FfiArrays, RunResult};

/// The signature of the `__run` symbol that `#[udf]` exports (arroyo-udf-plugin 0.2).
type RunFn = unsafe extern "C-unwind" fn(FfiArrays) -> RunResult;

/// Why a plugin could not be loaded or called.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// No `lib<name>.so` next to the test executable.
    #[error("plugin library {file} not found in {searched:?}")]
    NotFound {
        /// The file name looked for.
        file: String,
        /// The directories searched.
        searched: Vec<PathBuf>,
    },
    /// The test executable's path is unknown.
    #[error("cannot locate the test executable: {0}")]
    CurrentExe(#[source] std::io::Error),
    /// dlopen or dlsym failed.
    #[error("cannot load {path}: {source}")]
    Load {
        /// The library.
        path: PathBuf,
        /// The loader's error.
        #[source]
        source: libloading::Error,
    },
    /// The plugin returned `RunResult::Err` (the UDF panicked; the plugin caught it).
    #[error("the UDF failed (RunResult::Err)")]
    UdfFailed,
    /// The plugin's result could not be imported.
    #[error("cannot import the UDF's result: {0}")]
    Import(#[from] arrow::error::ArrowError),
}

/// A loaded plugin dylib and its `__run` entry point.
pub struct Plugin {
    run: RunFn,
    path: PathBuf,
    // Declared last: dropped after `run` (which is only a copy of a pointer into it anyway).
    library: Arc<libloading::Library>,
}

/// A UDF's result column. Keeps the plugin loaded while alive: the column's buffers are
/// released by a callback inside the plugin.
pub struct Output {
    // Field order matters: fields drop in declaration order, so the column is released before
    // this handle to the library can unload it.
    column: ArrayRef,
    _library: Arc<libloading::Library>,
}

impl Output {
    /// The result column.
    pub fn column(&self) -> &ArrayRef {
        &self.column
    }
}

impl Plugin {
    /// Loads `lib<crate_name>.so` (platform-specific name) built by cargo for this test run.
    pub fn load(crate_name: &str) -> Result<Plugin, HarnessError> {
        let path = locate(crate_name)?;
        // SAFETY: the library is a Rust cdylib built from this workspace by the same cargo
        // invocation; its initialisers are the standard Rust runtime's and have no preconditions.
        let library = unsafe { libloading::Library::new(&path) }.map_err(|source| HarnessError::Load { path: path.clone(), source })?;
        // SAFETY: `#[udf]` of arroyo-udf-plugin 0.2 exports `__run` with exactly `RunFn`'s
        // signature; the pointer stays valid while `library` (kept in `self`) is loaded.
        let run = unsafe { library.get::<RunFn>(b"__run\0") }
            .map(|symbol| *symbol)
            .map_err(|source| HarnessError::Load { path: path.clone(), source })?;
        Ok(Plugin { run, path, library: Arc::new(library) })
    }

    /// Where the library was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls `__run` on one batch of argument columns, as an Arroyo worker does: export every
    /// column through the C data interface, hand ownership to the plugin, import the result.
    pub fn call(&self, columns: &[ArrayRef]) -> Result<Output, HarnessError> {
        let arguments = FfiArrays::from_vec(columns.iter().map(|column| column.to_data()).collect());
        // SAFETY: `run` points into the loaded library (see `load`); `arguments` is a valid
        // FfiArrays whose ownership passes to the plugin, which frees it (also after a panic).
        let result = unsafe { (self.run)(arguments) };
        match result {
            RunResult::Ok(FfiArraySchema(array, schema)) => {
                // SAFETY: the plugin built `array` and `schema` with arrow's `to_ffi`; `from_ffi`
                // takes ownership of `array` and calls its release callback when dropped.
                let data: ArrayData = unsafe { from_ffi(array, &schema) }?;
                Ok(Output { column: make_array(data), _library: Arc::clone(&self.library) })
            }
            RunResult::Err => Err(HarnessError::UdfFailed),
        }
    }
}

/// Finds the plugin next to the test executable (`target/<profile>/deps/<test>-<hash>`).
fn locate(crate_name: &str) -> Result<PathBuf, HarnessError> {
    let file = format!("{}{crate_name}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let executable = std::env::current_exe().map_err(HarnessError::CurrentExe)?;
    let searched: Vec<PathBuf> = executable.ancestors().skip(1).take(2).map(Path::to_path_buf).collect();
    searched
        .iter()
        .map(|directory| directory.join(&file))
        .find(|candidate| candidate.is_file())
        .ok_or(HarnessError::NotFound { file, searched })
}

/// Asserts the invariant every `__run` result must keep: one row out per row in.
pub fn assert_rows(output: &Output, rows: usize) {
    assert_eq!(output.column().len(), rows, "the UDF must return one value per input row");
}
