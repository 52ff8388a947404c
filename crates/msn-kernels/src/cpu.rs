//! The one CPU probe every kernel asks: what the CPU has, found once, capped by `MSN_CPU`.
//!
//! `MSN_CPU=generic|avx2|avx512|neon|dotprod` caps the level our kernels use, for A/B runs
//! and tests of the paths other machines take; a level above what the CPU has gives what it
//! has. `generic` is plain Rust (what armv7 and CPUs without AVX2 run). The same cap is handed
//! to tract (its `TRACT_CPU_ISA` knob, unless that is set already), so a capped run is the
//! run a machine of that level makes, tract's matrix kernels included; on aarch64 tract keeps
//! NEON even under `generic`, which it cannot run without.
//!
//! Nothing else in the workspace detects CPU features: [`Cpu::detect`] is the one place.

use std::fmt;
use std::sync::OnceLock;

/// A level of vector instructions, lowest first. x86-64: `Generic < Avx2 < Avx512`;
/// aarch64: `Generic < Neon < Dotprod`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Plain Rust, what the compiler makes of it for the target's baseline.
    Generic,
    /// x86-64 AVX2 with FMA (laptops, desktops from 2013 on).
    Avx2,
    /// x86-64 AVX-512 F, BW, VL (and VNNI where the CPU has it).
    Avx512,
    /// aarch64 Advanced SIMD (every 64-bit ARM board).
    Neon,
    /// aarch64 NEON with the dot product (`sdot`; Raspberry Pi 5, Jetson Orin).
    Dotprod,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 5] = [
        Level::Generic,
        Level::Avx2,
        Level::Avx512,
        Level::Neon,
        Level::Dotprod,
    ];

    /// The name `MSN_CPU` takes.
    pub fn name(self) -> &'static str {
        match self {
            Level::Generic => "generic",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Neon => "neon",
            Level::Dotprod => "dotprod",
        }
    }

    /// The level `MSN_CPU` names.
    pub fn from_name(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == name)
    }

    /// Whether the level is one this build's architecture has.
    pub fn on_this_arch(self) -> bool {
        match self {
            Level::Generic => true,
            Level::Avx2 | Level::Avx512 => cfg!(target_arch = "x86_64"),
            Level::Neon | Level::Dotprod => cfg!(target_arch = "aarch64"),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a kernel may use: the CPU's features at or below a [`Level`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cpu {
    level: Level,
    /// AVX-512 VNNI (`vpdpbusd`), within [`Level::Avx512`].
    vnni: bool,
    /// aarch64 half-precision arithmetic (ARMv8.2-A FP16), within [`Level::Neon`] and up.
    fp16: bool,
}

impl Cpu {
    /// Plain Rust only.
    pub const GENERIC: Cpu = Cpu {
        level: Level::Generic,
        vnni: false,
        fp16: false,
    };

    /// What this CPU has, uncapped: the only feature detection in the workspace.
    pub fn detect() -> Cpu {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
                return Cpu {
                    level: Level::Avx512,
                    vnni: has!("avx512vnni"),
                    fp16: false,
                };
            }
            if has!("avx2") && has!("fma") {
                return Cpu {
                    level: Level::Avx2,
                    vnni: false,
                    fp16: false,
                };
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            use std::arch::is_aarch64_feature_detected as has;
            let level = if has!("dotprod") {
                Level::Dotprod
            } else {
                Level::Neon
            };
            return Cpu {
                level,
                vnni: false,
                fp16: has!("fp16"),
            };
        }
        #[allow(unreachable_code)]
        Cpu::GENERIC
    }

    /// This CPU capped at `cap`: the features at or below it.
    pub fn capped(self, cap: Level) -> Cpu {
        if cap >= self.level || !cap.on_this_arch() && cap != Level::Generic {
            // A level of another architecture caps nothing here ([`from_env`] refuses it).
            return self;
        }
        Cpu {
            level: cap,
            vnni: self.vnni && cap == Level::Avx512,
            fp16: self.fp16 && cap >= Level::Neon,
        }
    }

    /// The level.
    pub fn level(self) -> Level {
        self.level
    }

    /// AVX2 and FMA.
    pub fn avx2(self) -> bool {
        self.level >= Level::Avx2 && self.level <= Level::Avx512
    }

    /// AVX-512 F, BW and VL.
    pub fn avx512(self) -> bool {
        self.level == Level::Avx512
    }

    /// AVX-512 VNNI.
    pub fn avx512_vnni(self) -> bool {
        self.avx512() && self.vnni
    }

    /// aarch64 NEON.
    pub fn neon(self) -> bool {
        self.level >= Level::Neon
    }

    /// aarch64 NEON with the dot product instructions.
    pub fn dotprod(self) -> bool {
        self.level == Level::Dotprod
    }

    /// aarch64 half-precision arithmetic (ARMv8.2-A FP16: Raspberry Pi 5, Jetson Orin), which
    /// tract's f16 kernels need.
    pub fn fp16(self) -> bool {
        self.fp16
    }

    /// Every level from generic up to this one, on this architecture: what tests and the
    /// differential fuzz target run each kernel under.
    pub fn levels(self) -> Vec<Cpu> {
        Level::ALL
            .into_iter()
            .filter(|l| l.on_this_arch() && *l <= self.level)
            .map(|l| self.capped(l))
            .collect()
    }

    /// tract's `TRACT_CPU_ISA` edit that takes away what is above this level.
    pub fn tract_isa(self) -> Option<&'static str> {
        match (cfg!(target_arch = "x86_64"), self.level) {
            (true, Level::Generic) => Some(
                "-avx,-avx2,-fma,-f16c,-avx512f,-avx512vnni,-avx512fp16,-avxvnni,-amx-int8,-amx-bf16",
            ),
            (true, Level::Avx2) => Some("-avx512f,-avx512vnni,-avx512fp16,-avxvnni,-amx-int8,-amx-bf16"),
            (false, Level::Generic | Level::Neon) if cfg!(target_arch = "aarch64") => {
                Some("-dotprod,-fp16,-sve2,-sme,-sme2")
            }
            _ => None,
        }
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.level)?;
        if self.avx512_vnni() {
            f.write_str("+vnni")?;
        }
        if self.fp16 {
            f.write_str("+fp16")?;
        }
        Ok(())
    }
}

/// `MSN_CPU` read and checked: `Ok(None)` when it is unset or empty.
pub fn cap_from_env() -> Result<Option<Level>, String> {
    let Ok(v) = std::env::var("MSN_CPU") else {
        return Ok(None);
    };
    let v = v.trim().to_ascii_lowercase();
    if v.is_empty() {
        return Ok(None);
    }
    let here: Vec<&str> = Level::ALL
        .into_iter()
        .filter(|l| l.on_this_arch())
        .map(Level::name)
        .collect();
    match Level::from_name(&v) {
        Some(l) if l.on_this_arch() => Ok(Some(l)),
        Some(l) => Err(format!(
            "MSN_CPU={l}: that is a level of another architecture; on {} it is one of {}",
            std::env::consts::ARCH,
            here.join(", ")
        )),
        None => Err(format!(
            "MSN_CPU={v:?}: not a level; on {} it is one of {}",
            std::env::consts::ARCH,
            here.join(", ")
        )),
    }
}

/// The CPU every kernel asks: detected once, capped by `MSN_CPU` (an invalid value caps
/// nothing; [`cap_from_env`] says why, and the command-line tools refuse it). The first call
/// also hands the cap to tract, before tract probes the CPU itself.
pub fn get() -> Cpu {
    static CPU: OnceLock<Cpu> = OnceLock::new();
    *CPU.get_or_init(|| {
        let cpu = match cap_from_env() {
            Ok(Some(cap)) => Cpu::detect().capped(cap),
            _ => Cpu::detect(),
        };
        if cpu != Cpu::detect() && std::env::var_os("TRACT_CPU_ISA").is_none() {
            if let Some(spec) = cpu.tract_isa() {
                tract_onnx::tract_core::internal::tract_data::knobs::set_str("TRACT_CPU_ISA", spec);
            }
        }
        cpu
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_caps_only_lower() {
        for l in Level::ALL {
            assert_eq!(Level::from_name(l.name()), Some(l));
        }
        let cpu = Cpu::detect();
        assert_eq!(cpu.capped(Level::Generic), Cpu::GENERIC);
        assert_eq!(cpu.capped(cpu.level()), cpu);
        for c in cpu.levels() {
            assert!(c.level() <= cpu.level());
            assert!(!c.avx512_vnni() || cpu.avx512_vnni());
        }
        assert_eq!(cpu.levels().last(), Some(&cpu));
        #[cfg(target_arch = "x86_64")]
        {
            assert!(!Cpu::GENERIC.avx2() && !Cpu::GENERIC.avx512());
            if cpu.avx512() {
                assert!(cpu.capped(Level::Avx2).avx2());
                assert!(!cpu.capped(Level::Avx2).avx512());
            }
        }
    }
}
