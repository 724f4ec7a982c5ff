//! Every kernel compiles with NVRTC for every architecture the kernels are built for (sm_90a,
//! sm_100a, sm_103a) and defines its entry points.
//!
//! A custom harness, so that without NVRTC the trials show as *ignored*, not passed; with
//! `ULTRAEP_REQUIRE_NVRTC=1` (as CI sets after installing the pinned NVRTC wheel) a missing NVRTC
//! is a failure.

use libtest_mimic::{Arguments, Failed, Trial};
use ultraep_kernels::{
    Arch, KernelError, KernelSource, compile, compile_for, nvrtc_available, sources,
};

fn main() {
    let args = Arguments::from_args();
    let required = std::env::var("ULTRAEP_REQUIRE_NVRTC").is_ok_and(|value| value == "1");
    let available = nvrtc_available();
    let mut trials: Vec<Trial> = sources::ALL
        .iter()
        .flat_map(|kernel| Arch::ALL.map(|arch| (kernel, arch)))
        .map(|(kernel, arch)| {
            let name = format!("nvrtc_compiles_{}_for_{}", kernel.name, arch.name());
            Trial::test(name, move || {
                if !available {
                    return Err(Failed::from(
                        "ULTRAEP_REQUIRE_NVRTC=1 but libnvrtc.so.13 could not be loaded",
                    ));
                }
                let ptx =
                    compile_for(kernel, arch).map_err(|error| Failed::from(error.to_string()))?;
                let text = ptx.to_src();
                for entry in kernel.entry_points {
                    if !text.contains(&format!(".entry {entry}")) {
                        return Err(Failed::from(format!("the PTX defines no entry {entry}")));
                    }
                }
                if !text.contains(&format!(".target {}", arch.name())) {
                    return Err(Failed::from(format!(
                        "the PTX does not target {}",
                        arch.name()
                    )));
                }
                Ok(())
            })
            .with_ignored_flag(!available && !required)
        })
        .collect();
    trials.push(
        Trial::test("nvrtc_reports_a_broken_kernel_with_its_log", move || {
            if !available {
                return Err(Failed::from(
                    "ULTRAEP_REQUIRE_NVRTC=1 but libnvrtc.so.13 could not be loaded",
                ));
            }
            let broken = KernelSource {
                name: "broken",
                source: "extern \"C\" __global__ void broken() { undeclared_name = 1; }",
                entry_points: &["broken"],
            };
            match compile(&broken) {
                Err(KernelError::Compile {
                    kernel: "broken",
                    log,
                }) if log.contains("undeclared_name") => Ok(()),
                other => Err(Failed::from(format!(
                    "expected a compile error naming the symbol, got {other:?}"
                ))),
            }
        })
        .with_ignored_flag(!available && !required),
    );
    // NVIDIA's assembler on every kernel for every architecture: no spills, no local memory.
    // `ULTRAEP_PTXAS` names ptxas (CI installs the pinned nvidia-cuda-nvcc wheel and sets it);
    // without it the trial is ignored, unless ULTRAEP_REQUIRE_PTXAS=1 asks for it (as CI does). A
    // GPU machine may have NVRTC and no ptxas: requiring NVRTC does not require ptxas.
    let ptxas = std::env::var_os("ULTRAEP_PTXAS").map(std::path::PathBuf::from);
    let ptxas_missing = ptxas.is_none();
    let ptxas_required = std::env::var("ULTRAEP_REQUIRE_PTXAS").is_ok_and(|value| value == "1");
    trials.push(
        Trial::test("ptxas_finds_no_spills_or_local_memory", move || {
            let Some(ptxas) = &ptxas else {
                return Err(Failed::from(
                    "ULTRAEP_REQUIRE_PTXAS=1 but ULTRAEP_PTXAS is not set",
                ));
            };
            if !available {
                return Err(Failed::from("libnvrtc.so.13 could not be loaded"));
            }
            ptxas_table(ptxas).map_err(Failed::from)
        })
        .with_ignored_flag((!available && !required) || (ptxas_missing && !ptxas_required)),
    );
    libtest_mimic::run(&args, trials).exit();
}

/// Assembles every kernel for every architecture with `ptxas -v`, prints the register, stack,
/// spill and shared-memory figures of every entry point as a markdown table, and fails on any
/// spill or stack frame (local memory).
fn ptxas_table(ptxas: &std::path::Path) -> Result<(), String> {
    // ULTRAEP_PTX_OUT keeps the PTX (e.g. to read the streamer's instruction mix).
    let kept = std::env::var_os("ULTRAEP_PTX_OUT").map(std::path::PathBuf::from);
    let dir = kept.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("ultraep-ptxas-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut table = String::from(
        "| kernel | entry | arch | registers | stack frame (bytes) | spill stores / loads (bytes) | static shared (bytes) |\n|---|---|---|---|---|---|---|\n",
    );
    let mut problems = Vec::new();
    for kernel in &sources::ALL {
        for arch in Arch::ALL {
            let ptx = compile_for(kernel, arch).map_err(|e| e.to_string())?;
            let path = dir.join(format!("{}_{}.ptx", kernel.name, arch.name()));
            std::fs::write(&path, ptx.to_src()).map_err(|e| e.to_string())?;
            let output = std::process::Command::new(ptxas)
                .arg(format!("-arch={}", arch.name()))
                .arg("-v")
                .arg(&path)
                .arg("-o")
                .arg(dir.join("out.cubin"))
                .output()
                .map_err(|e| format!("{}: {e}", ptxas.display()))?;
            let log = String::from_utf8_lossy(&output.stderr);
            if !output.status.success() {
                return Err(format!(
                    "ptxas failed on {} for {}: {log}",
                    kernel.name,
                    arch.name()
                ));
            }
            for entry in parse_ptxas(&log) {
                table.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} / {} | {} |\n",
                    kernel.name,
                    entry.name,
                    arch.name(),
                    entry.registers,
                    entry.stack,
                    entry.spill_stores,
                    entry.spill_loads,
                    entry.shared
                ));
                if entry.stack > 0 || entry.spill_stores > 0 || entry.spill_loads > 0 {
                    problems.push(format!("{} for {}", entry.name, arch.name()));
                }
            }
        }
    }
    if kept.is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
    println!("\n{table}");
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "spills or local memory in: {}",
            problems.join(", ")
        ))
    }
}

/// One entry point's figures in `ptxas -v` output.
#[derive(Debug, Default)]
struct EntryFigures {
    name: String,
    registers: u64,
    stack: u64,
    spill_stores: u64,
    spill_loads: u64,
    shared: u64,
}

fn parse_ptxas(log: &str) -> Vec<EntryFigures> {
    // The number before `unit` in `text` (e.g. "0 bytes stack frame").
    let before = |text: &str, unit: &str| -> u64 {
        text.find(unit)
            .and_then(|at| text[..at].split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut entries: Vec<EntryFigures> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            entries.push(EntryFigures {
                name: rest.trim().to_owned(),
                ..EntryFigures::default()
            });
        } else if let Some(entry) = entries.last_mut() {
            if line.contains("stack frame") {
                entry.stack = before(line, "bytes stack frame");
                entry.spill_stores = before(line, "bytes spill stores");
                entry.spill_loads = before(line, "bytes spill loads");
            } else if line.contains("Used") && line.contains("registers") {
                entry.registers = before(line, "registers");
                entry.shared = before(line, "bytes smem");
            }
        }
    }
    entries
}
