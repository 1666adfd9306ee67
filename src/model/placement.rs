//! Where a model runs and in what precision: the `device` and `dtype` parameters of every model
//! stage and of `asl model chat`.
//!
//! - device: `cpu` (default), `cuda` / `cuda:N` (needs a build with `--features cuda`), or
//!   `auto` (the first CUDA device when there is one, else the CPU).
//! - dtype: `f32` (default), `bf16`, `f16`, `q8_0`, `amx_bf16`, or `auto` (bf16 on CUDA, f32 on
//!   the CPU). Half precision, `q8_0` (int8 weight blocks through candle's `QMatMul`, f32
//!   activations, CPU only) and `amx_bf16` (bf16 weights and matmul inputs on the CPU's bf16
//!   units, AMX tiles or else AVX-512-BF16, f32 accumulation and activations: [`super::amx`]) are
//!   for inference (sampling, judging, evaluation); training keeps f32 weights,
//!   moments and gradients, because the gradient shards are f32 by design and AdamW's updates at
//!   lr 1e-5 vanish below bf16's precision, and `train` recomputes every log-prob in f32.

use candle_core::{DType, Device};

use super::error::{ModelError, Result};

/// How the projections' weights are stored for sampling when not dense in `dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    /// Blocks of 32 int8 with an f16 scale, through candle's `QMatMul`.
    Q8_0,
    /// bf16 in Intel AMX tiles ([`super::amx::PackedBf16`]).
    AmxBf16,
}

/// A device and the dtype weights and activations use on it.
#[derive(Debug, Clone)]
pub struct Placement {
    pub device: Device,
    /// Activations, and the weights unless `quant` is set.
    pub dtype: DType,
    /// The projections' weights stored this way (activations in `dtype`, f32).
    pub quant: Option<Quant>,
}

/// The two halves of a placement, to say which value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Device,
    Dtype,
}

impl Part {
    /// The parameter that holds this half.
    pub(crate) fn param(self) -> &'static str {
        match self {
            Part::Device => "device",
            Part::Dtype => "dtype",
        }
    }
}

impl Default for Placement {
    fn default() -> Self {
        Self::cpu()
    }
}

impl Placement {
    /// f32 on the CPU: what tests and the default pipelines use.
    pub fn cpu() -> Self {
        Self::f32_on(&Device::Cpu)
    }

    /// f32 on `device`: what training uses on any device.
    pub(crate) fn f32_on(device: &Device) -> Self {
        Self {
            device: device.clone(),
            dtype: DType::F32,
            quant: None,
        }
    }

    /// Parses the `device` and `dtype` parameter values (see the module docs).
    pub fn parse(device: &str, dtype: &str) -> Result<Self> {
        Self::parse_each(device, dtype).map_err(|(_, e)| e)
    }

    /// [`Placement::parse`], saying which of the two values was refused, so that a caller can
    /// name the parameter.
    pub(crate) fn parse_each(
        device: &str,
        dtype: &str,
    ) -> std::result::Result<Self, (Part, ModelError)> {
        let device = parse_device(device).map_err(|e| (Part::Device, e))?;
        let (dtype, quant) = parse_dtype(dtype, &device).map_err(|e| (Part::Dtype, e))?;
        Ok(Self {
            device,
            dtype,
            quant,
        })
    }

    /// `cpu/f32`, `cuda:0/bf16`, … for test messages.
    #[cfg(test)]
    fn describe(&self) -> String {
        let device = match self.device.location() {
            candle_core::DeviceLocation::Cpu => "cpu".to_string(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        };
        let dtype = match self.dtype {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            other => other.as_str(),
        };
        match self.quant {
            Some(Quant::Q8_0) => format!("{device}/q8_0"),
            Some(Quant::AmxBf16) => format!("{device}/amx_bf16"),
            None => format!("{device}/{dtype}"),
        }
    }
}

fn parse_device(text: &str) -> Result<Device> {
    let bad = |msg: String| ModelError::InvalidArgument(format!("device {text:?}: {msg}"));
    let ordinal = match text.trim() {
        "cpu" => return Ok(Device::Cpu),
        "auto" => {
            // A CUDA build on a machine without a usable GPU runs on the CPU.
            return Ok(Device::new_cuda(0).unwrap_or(Device::Cpu));
        }
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => return Err(bad("expected cpu, cuda, cuda:N or auto".into())),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(bad(
            "this asl was built without CUDA; rebuild with `cargo build --release --features cuda`"
                .into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        // The driver's answer without candle's captured backtrace: one line. A machine without
        // the NVIDIA driver answers CUDA_ERROR_STUB_LIBRARY (scripts/build-cuda.sh's stub).
        let e = match e {
            candle_core::Error::WithBacktrace { inner, .. } => *inner,
            e => e,
        };
        bad(format!("no usable GPU ({e})"))
    })
}

/// The activation dtype and, for `q8_0`, the weights' quantization.
fn parse_dtype(text: &str, device: &Device) -> Result<(DType, Option<Quant>)> {
    let dense = |d| Ok((d, None));
    match text.trim() {
        "f32" | "float32" => dense(DType::F32),
        "bf16" | "bfloat16" => dense(DType::BF16),
        "f16" | "float16" => dense(DType::F16),
        "auto" if device.is_cpu() => dense(DType::F32),
        "auto" => dense(DType::BF16),
        "q8_0" if device.is_cpu() => Ok((DType::F32, Some(Quant::Q8_0))),
        "q8_0" => Err(ModelError::InvalidArgument(
            "dtype \"q8_0\": the quantized path is measured on the CPU only; use bf16 on CUDA"
                .into(),
        )),
        "amx_bf16" if device.is_cpu() && super::amx::available() => {
            Ok((DType::F32, Some(Quant::AmxBf16)))
        }
        "amx_bf16" if device.is_cpu() => Err(ModelError::InvalidArgument(
            "dtype \"amx_bf16\": this CPU (or its OS) has neither AMX-BF16 tiles nor AVX-512-BF16 \
             (lscpu flags amx_bf16, avx512_bf16); use q8_0 or f32"
                .into(),
        )),
        "amx_bf16" => Err(ModelError::InvalidArgument(
            "dtype \"amx_bf16\": the bf16 kernels are the CPU's; use bf16 on CUDA".into(),
        )),
        other => Err(ModelError::InvalidArgument(format!(
            "dtype {other:?}: expected f32, bf16, f16, q8_0, amx_bf16 or auto"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_placements_and_names_them() {
        let p = Placement::parse("cpu", "bf16").unwrap();
        assert!(p.device.is_cpu());
        assert_eq!(p.dtype, DType::BF16);
        assert_eq!(p.describe(), "cpu/bf16");
        assert_eq!(Placement::parse("cpu", "auto").unwrap().dtype, DType::F32);
        assert_eq!(
            Placement::parse("cpu", "float16").unwrap().dtype,
            DType::F16
        );
        assert_eq!(Placement::default().describe(), "cpu/f32");
        let q = Placement::parse("cpu", "q8_0").unwrap();
        assert_eq!((q.dtype, q.quant), (DType::F32, Some(Quant::Q8_0)));
        assert_eq!(q.describe(), "cpu/q8_0");
        // amx_bf16 where the CPU has a bf16 kernel, one line saying it has none elsewhere.
        match Placement::parse("cpu", "amx_bf16") {
            Ok(a) => {
                assert!(super::super::amx::available());
                assert_eq!((a.dtype, a.quant), (DType::F32, Some(Quant::AmxBf16)));
                assert_eq!(a.describe(), "cpu/amx_bf16");
            }
            Err(e) => {
                assert!(!super::super::amx::available());
                let e = e.to_string();
                assert!(e.contains("amx_bf16") && !e.contains('\n'), "{e}");
            }
        }
    }

    #[test]
    fn auto_device_falls_back_to_the_cpu_without_cuda() {
        let p = Placement::parse("auto", "auto").unwrap();
        if p.device.is_cpu() {
            assert_eq!(p.describe(), "cpu/f32");
        } else {
            assert_eq!(p.dtype, DType::BF16);
        }
    }

    #[test]
    fn refuses_unknown_devices_and_dtypes_in_one_line() {
        let e = Placement::parse("tpu", "f32").unwrap_err().to_string();
        assert!(e.contains("\"tpu\"") && e.contains("cuda:N"), "{e}");
        let e = Placement::parse("cuda:x", "f32").unwrap_err().to_string();
        assert!(e.contains("cuda:x"), "{e}");
        let e = Placement::parse("cpu", "int8").unwrap_err().to_string();
        assert!(e.contains("int8") && e.contains("bf16"), "{e}");
        if !candle_core::utils::cuda_is_available() {
            let e = Placement::parse("cuda:1", "bf16").unwrap_err().to_string();
            assert!(e.contains("--features cuda") && !e.contains('\n'), "{e}");
        }
    }
}
