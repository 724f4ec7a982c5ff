//! Every kernel compiles with NVRTC for sm_90a and defines its entry points.
//!
//! A custom harness, so that without NVRTC the trials show as *ignored*, not passed; with
//! `ULTRAEP_REQUIRE_NVRTC=1` (as CI sets after installing the pinned NVRTC wheel) a missing NVRTC
//! is a failure.

use libtest_mimic::{Arguments, Failed, Trial};
use ultraep_kernels::{KernelError, KernelSource, compile, nvrtc_available, sources};

fn main() {
    let args = Arguments::from_args();
    let required = std::env::var("ULTRAEP_REQUIRE_NVRTC").is_ok_and(|value| value == "1");
    let available = nvrtc_available();
    let mut trials: Vec<Trial> = sources::ALL
        .iter()
        .map(|kernel| {
            Trial::test(format!("nvrtc_compiles_{}", kernel.name), move || {
                if !available {
                    return Err(Failed::from(
                        "ULTRAEP_REQUIRE_NVRTC=1 but libnvrtc.so.13 could not be loaded",
                    ));
                }
                let ptx = compile(kernel).map_err(|error| Failed::from(error.to_string()))?;
                let text = ptx.to_src();
                for entry in kernel.entry_points {
                    if !text.contains(&format!(".entry {entry}")) {
                        return Err(Failed::from(format!("the PTX defines no entry {entry}")));
                    }
                }
                if !text.contains(".target sm_90a") {
                    return Err(Failed::from("the PTX does not target sm_90a"));
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
    libtest_mimic::run(&args, trials).exit();
}
