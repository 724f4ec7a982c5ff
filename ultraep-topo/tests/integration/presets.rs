//! The presets: their descriptions (snapshots), their published aggregates, and their names.

use ultraep_topo::{GIGABYTE, LinkClass, Preset, RankId, TopoError, Topology};

#[test]
fn preset_descriptions() {
    for preset in Preset::ALL {
        let topo = preset.topology(2).unwrap();
        insta::assert_snapshot!(preset.name(), topo.to_string());
    }
}

#[test]
fn topology_file_of_a_preset() {
    let text = Preset::HgxH100
        .topology(2)
        .unwrap()
        .to_toml_string()
        .unwrap();
    insta::assert_snapshot!(text);
}

#[test]
fn nvl72_aggregate_matches_the_published_130_terabytes_per_second() {
    // NVIDIA quotes 130 TB/s of NVLink bandwidth per NVL72 rack: 72 GPUs x 1.8 TB/s, rounded.
    let rack = Preset::Gb200Nvl72.topology(1).unwrap();
    let both_directions: u64 = rack
        .ranks()
        .map(|rank| {
            let links = rack.links(rank).unwrap();
            links.scale_up_egress.get() + links.scale_up_ingress.get()
        })
        .sum();
    let terabytes = both_directions as f64 / (1000 * GIGABYTE) as f64;
    assert!((terabytes - 130.0).abs() / 130.0 < 0.01, "{terabytes} TB/s");
}

#[test]
fn preset_shapes() {
    let expected = [
        (Preset::Gb200Nvl72, 72),
        (Preset::Gb300Nvl72, 72),
        (Preset::Gb200Nvl36, 36),
        (Preset::HgxH100, 8),
        (Preset::HgxH200, 8),
        (Preset::HgxB200, 8),
    ];
    for (preset, size) in expected {
        let topo = preset.topology(3).unwrap();
        assert_eq!(topo.rank_count(), 3 * size, "{preset}");
        assert_eq!(topo.domain_count(), 3, "{preset}");
        let last = RankId(size as u32 - 1);
        assert_eq!(
            topo.link_class(RankId(0), last).unwrap(),
            LinkClass::ScaleUp
        );
        let next = RankId(size as u32);
        assert_eq!(
            topo.link_class(RankId(0), next).unwrap(),
            LinkClass::ScaleOut
        );
    }
}

#[test]
fn preset_names_parse_back() {
    for preset in Preset::ALL {
        assert_eq!(preset.name().parse::<Preset>(), Ok(preset));
    }
    let error = "dgx-a100".parse::<Preset>().unwrap_err();
    assert!(matches!(error, TopoError::UnknownPreset { .. }));
    assert!(error.to_string().contains("gb200-nvl72, gb300-nvl72"));
}

#[test]
fn preset_counts_are_checked() {
    assert!(matches!(
        Preset::HgxH100.topology(0),
        Err(TopoError::InvalidPresetCount { count: 0, .. })
    ));
    let max = Preset::Gb200Nvl72.max_count();
    assert!(Preset::Gb200Nvl72.topology(max + 1).is_err());
}

#[test]
fn presets_survive_the_file_round_trip() {
    for preset in Preset::ALL {
        let topo = preset.topology(2).unwrap();
        let text = topo.to_toml_string().unwrap();
        assert_eq!(Topology::from_toml_str(&text), Ok(topo), "{preset}");
    }
}
