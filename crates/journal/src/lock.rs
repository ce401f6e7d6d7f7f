//! The data directory's single-instance lock.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::Write as _,
    path::{Path, PathBuf},
};

use crate::{Error, Result, LOCK_FILE};

/// An exclusive lock on the data directory, held for the life of the value: a second validator
/// started on the same directory fails with [`Error::Locked`] instead of sharing the journal.
///
/// The lock is the operating system's advisory lock on `{data_dir}/LOCK`, released when the
/// process exits however it exits; the file itself stays and holds the holder's process id.
#[derive(Debug)]
pub struct DataDirLock {
    dir: PathBuf,
    _file: File,
}

impl DataDirLock {
    /// Creates the directory if needed and takes its lock without waiting.
    pub fn acquire(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| Error::Io { path: data_dir.to_owned(), source })?;
        let path = data_dir.join(LOCK_FILE);
        let io = |source| Error::Io { path: path.clone(), source };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Locked { path: data_dir.to_owned() });
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
        file.set_len(0).and_then(|()| writeln!(file, "{}", std::process::id())).map_err(io)?;
        Ok(Self { dir: data_dir.to_owned(), _file: file })
    }

    /// The locked data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
