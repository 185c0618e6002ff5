//! The machine a figure was measured on: printed beside every benchmark result, since a rate
//! means little without the CPU, its vector extensions and the number of threads.

use serde::{Deserialize, Serialize};

/// The SIMD extensions the CPU kernels can use, in the order they are reported.
pub const SIMD_FLAGS: &[&str] = &[
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
    "sve2",
    "i8mm",
];

/// The CPU, as `/proc/cpuinfo` and the OS describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// Model name (`unknown` where not reported).
    pub model: String,
    /// The entries of [`SIMD_FLAGS`] the CPU has.
    pub flags: Vec<String>,
    /// Threads this process may run on.
    pub threads: usize,
    /// Installed memory in bytes (`MemTotal`; 0 where unknown).
    pub memory_bytes: u64,
    /// The variant of phive's CPU kernels this run used ([`crate::kernels::simd_level`]; empty
    /// in reports from other engines).
    #[serde(default)]
    pub kernels: String,
}

impl CpuInfo {
    /// Reads the CPU of this machine (Linux; elsewhere only the thread count is known).
    pub fn detect() -> CpuInfo {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let threads = std::thread::available_parallelism().map_or(0, |n| n.get());
        CpuInfo {
            kernels: crate::kernels::simd_level().name().to_string(),
            ..Self::parse(&info, &meminfo, threads)
        }
    }

    /// [`CpuInfo::detect`] from the texts of `/proc/cpuinfo` and `/proc/meminfo`.
    pub fn parse(cpuinfo: &str, meminfo: &str, threads: usize) -> CpuInfo {
        let field = |key: &str| {
            cpuinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
        };
        // x86 calls them `flags`, arm64 `Features`; arm64 names the part in `CPU part` only.
        let model = field("model name").or_else(|| field("Model")).unwrap_or_else(|| "unknown".into());
        let present = field("flags").or_else(|| field("Features")).unwrap_or_default();
        let flags = SIMD_FLAGS
            .iter()
            .filter(|f| present.split_whitespace().any(|x| x == **f))
            .map(|f| f.to_string())
            .collect();
        let memory_bytes = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        CpuInfo { model, flags, threads, memory_bytes, kernels: String::new() }
    }
}

impl std::fmt::Display for CpuInfo {
    /// `Intel(R) Xeon(R) ... [avx2 fma avx512f], 16 threads`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}], {} threads", self.model, self.flags.join(" "), self.threads)?;
        if !self.kernels.is_empty() {
            write!(f, ", phive kernels {}", self.kernels)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_flags_and_memory() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Test CPU @ 2.0GHz\nflags\t\t: fpu sse4_2 avx2 fma avx512f avx512_vnni amx_tile\n";
        let cpu = CpuInfo::parse(cpuinfo, "MemTotal:       16384 kB\n", 8);
        assert_eq!(cpu.model, "Test CPU @ 2.0GHz");
        assert_eq!(cpu.flags, ["sse4_2", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile"]);
        assert_eq!(cpu.memory_bytes, 16384 * 1024);
        assert_eq!(
            cpu.to_string(),
            "Test CPU @ 2.0GHz [sse4_2 avx2 fma avx512f avx512_vnni amx_tile], 8 threads"
        );
        let ours = CpuInfo { kernels: "avx2".into(), ..cpu };
        assert!(ours.to_string().ends_with("8 threads, phive kernels avx2"));
        let unknown = CpuInfo::parse("", "", 1);
        assert_eq!((unknown.model.as_str(), unknown.flags.len(), unknown.memory_bytes), ("unknown", 0, 0));
    }
}
