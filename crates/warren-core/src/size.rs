use serde::{Deserialize, Serialize};

/// The resources of one workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Size {
    /// CPU quota in thousandths of a CPU (1000 = one full CPU).
    pub millicpus: u32,
    pub memory_mib: u32,
    /// Writable disk of the workspace.
    pub disk_mib: u32,
    /// Most processes (and threads) the workspace may have.
    pub pids: u32,
}

impl Default for Size {
    /// The E2B default class: 2 vCPU, 512 MiB, plus a 1 GiB writable layer.
    fn default() -> Self {
        Size { millicpus: 2000, memory_mib: 512, disk_mib: 1024, pids: 1024 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("{field} must be between {min} and {max}, got {got}")]
    OutOfRange { field: &'static str, min: u32, max: u32, got: u32 },
}

impl Size {
    /// Checks every field against sane bounds.
    pub fn validate(&self) -> Result<(), SizeError> {
        let check = |field, got, min, max| {
            if got < min || got > max {
                Err(SizeError::OutOfRange { field, min, max, got })
            } else {
                Ok(())
            }
        };
        check("millicpus", self.millicpus, 10, 256_000)?;
        check("memoryMib", self.memory_mib, 16, 4 << 20)?;
        check("diskMib", self.disk_mib, 16, 16 << 20)?;
        check("pids", self.pids, 8, 4_194_304)?;
        Ok(())
    }

    /// Whole vCPUs, rounded up (what E2B's `cpuCount` reports).
    pub fn vcpus(&self) -> u32 {
        self.millicpus.div_ceil(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_hold() {
        Size::default().validate().unwrap();
        assert_eq!(Size::default().vcpus(), 2);
        let tiny = Size { memory_mib: 1, ..Size::default() };
        assert!(matches!(tiny.validate(), Err(SizeError::OutOfRange { field: "memoryMib", .. })));
        assert_eq!(Size { millicpus: 1500, ..Size::default() }.vcpus(), 2);
    }
}
