//! The closed set of weight encodings edgeforge writes, each with exactly one
//! on-disk / command-line name (`Scheme::Q4K` <-> `"Q4_K"`).
//!
//! GGUF block types keep llama.cpp's spelling; the safetensors encodings are
//! `int8_pc` (int8 per output channel, symmetric) and
//! `int4_g{32,64,128}_{sym,asym}` (4-bit group-wise along the input dimension).

use std::fmt;
use std::str::FromStr;

/// A weight encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    F32,
    F16,
    BF16,
    Q8_0,
    Q5_1,
    Q5_0,
    Q4_1,
    Q4_0,
    Q6K,
    Q5K,
    Q4K,
    Q3K,
    Q2K,
    /// llama.cpp's 4-bit non-linear levels, blocks of 32 (4.5 bits).
    IQ4NL,
    /// The same levels in 256-blocks with 6-bit sub-block scales (4.25 bits).
    IQ4XS,
    /// int8, one f32 scale per output channel, symmetric.
    Int8PerChannel,
    /// 4-bit integers in groups of `group` input elements.
    Int4Group {
        group: u16,
        symmetric: bool,
    },
}

/// Group sizes the 4-bit group-wise scheme supports.
pub const INT4_GROUPS: [u16; 3] = [32, 64, 128];

/// The name did not match any scheme.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Unknown scheme `{name}` (known: {known})")]
pub struct UnknownScheme {
    pub name: String,
    pub known: String,
}

impl Scheme {
    /// Every scheme, highest precision first within each family.
    pub fn all() -> Vec<Scheme> {
        let mut all = vec![
            Scheme::F32,
            Scheme::F16,
            Scheme::BF16,
            Scheme::Q8_0,
            Scheme::Q6K,
            Scheme::Q5_1,
            Scheme::Q5K,
            Scheme::Q5_0,
            Scheme::Q4_1,
            Scheme::Q4K,
            Scheme::Q4_0,
            Scheme::IQ4NL,
            Scheme::IQ4XS,
            Scheme::Q3K,
            Scheme::Q2K,
            Scheme::Int8PerChannel,
        ];
        for group in INT4_GROUPS {
            for symmetric in [false, true] {
                all.push(Scheme::Int4Group { group, symmetric });
            }
        }
        all
    }

    /// The canonical name, as written in targets, recipes, reports and files.
    pub fn name(self) -> String {
        match self {
            Scheme::F32 => "F32".into(),
            Scheme::F16 => "F16".into(),
            Scheme::BF16 => "BF16".into(),
            Scheme::Q8_0 => "Q8_0".into(),
            Scheme::Q5_1 => "Q5_1".into(),
            Scheme::Q5_0 => "Q5_0".into(),
            Scheme::Q4_1 => "Q4_1".into(),
            Scheme::Q4_0 => "Q4_0".into(),
            Scheme::Q6K => "Q6_K".into(),
            Scheme::Q5K => "Q5_K".into(),
            Scheme::Q4K => "Q4_K".into(),
            Scheme::Q3K => "Q3_K".into(),
            Scheme::Q2K => "Q2_K".into(),
            Scheme::IQ4NL => "IQ4_NL".into(),
            Scheme::IQ4XS => "IQ4_XS".into(),
            Scheme::Int8PerChannel => "int8_pc".into(),
            Scheme::Int4Group { group, symmetric } => {
                format!("int4_g{group}_{}", if symmetric { "sym" } else { "asym" })
            }
        }
    }

    /// Whether the encoding quantizes (is not a plain float), as
    /// `ggml_is_quantized` asks before applying any mix rule.
    pub fn is_quantized(self) -> bool {
        !matches!(self, Scheme::F32 | Scheme::F16 | Scheme::BF16)
    }

    /// Whether the encoding is a GGUF tensor type (else a safetensors encoding).
    pub fn is_gguf(self) -> bool {
        !matches!(self, Scheme::Int8PerChannel | Scheme::Int4Group { .. })
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Scheme {
    type Err = UnknownScheme;

    /// Accepts the canonical name case-insensitively.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Scheme::all()
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownScheme {
                name: name.to_string(),
                known: Scheme::all()
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl serde::Serialize for Scheme {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_scheme() {
        for scheme in Scheme::all() {
            assert_eq!(scheme.name().parse::<Scheme>().unwrap(), scheme);
        }
        assert_eq!("q4_k".parse::<Scheme>().unwrap(), Scheme::Q4K);
        assert_eq!("iq4_xs".parse::<Scheme>().unwrap(), Scheme::IQ4XS);
        assert!("Q4_K_M".parse::<Scheme>().is_err());
        assert!("int4_g48_sym".parse::<Scheme>().is_err());
    }
}
