//! Bad topology files: one test per case, each checking the error names the problem.

use ultraep_topo::{TopoError, Topology};

/// The link figures every case that is not about them takes as its defaults.
const LINKS: &str = "
[links]
scale_up_egress_gb_per_s = 450
scale_up_ingress_gb_per_s = 450
scale_up_latency_us = 1
scale_out_gb_per_s = 50
scale_out_latency_us = 3
";

/// Reads `name = "t"` + `LINKS` + `body`, expects an error matching `pattern` whose message contains
/// `fragment`.
macro_rules! bad_file {
    ($test:ident, $body:expr, $pattern:pat, $fragment:expr) => {
        #[test]
        fn $test() {
            let text = format!("name = \"t\"\n{LINKS}\n{}", $body);
            let error = Topology::from_toml_str(&text).expect_err("the file must be refused");
            assert!(matches!(error, $pattern), "unexpected error: {error:?}");
            let message = error.to_string();
            assert!(
                message.contains($fragment),
                "message {message:?} lacks {:?}",
                $fragment
            );
        }
    };
}

bad_file!(empty_topology, "", TopoError::Empty, "empty");
bad_file!(
    unknown_top_level_key,
    "rakcs = 2\n[[domain]]\nname = \"a\"\nranks = \"0-7\"",
    TopoError::Syntax { .. },
    "rakcs"
);
bad_file!(
    misspelt_link_key,
    "[[domain]]\nname = \"a\"\nranks = \"0-7\"\nlinks = { scale_up_egres_gb_per_s = 1 }",
    TopoError::Syntax { .. },
    "scale_up_egres_gb_per_s"
);
bad_file!(
    zero_bandwidth,
    "[[domain]]\nname = \"a\"\nranks = \"0-7\"\nlinks = { scale_out_gb_per_s = 0 }",
    TopoError::InvalidFigure {
        key: "scale_out_gb_per_s",
        ..
    },
    "domain \"a\""
);
bad_file!(
    negative_bandwidth,
    "[[domain]]\nname = \"a\"\nranks = \"0-7\"\nlinks = { scale_up_egress_gb_per_s = -450 }",
    TopoError::InvalidFigure {
        key: "scale_up_egress_gb_per_s",
        ..
    },
    "-450"
);
bad_file!(
    bandwidth_that_is_not_a_number,
    "[[domain]]\nname = \"a\"\nranks = \"0-7\"\nlinks = { scale_up_ingress_gb_per_s = nan }",
    TopoError::InvalidFigure {
        key: "scale_up_ingress_gb_per_s",
        ..
    },
    "positive"
);
bad_file!(
    negative_latency,
    "[[domain]]\nname = \"a\"\nranks = \"0-7\"\nlinks = { scale_up_latency_us = -1 }",
    TopoError::InvalidFigure {
        key: "scale_up_latency_us",
        ..
    },
    "microseconds"
);
bad_file!(
    rank_in_two_domains,
    "[[domain]]\nname = \"a\"\nranks = \"0-7\"\n[[domain]]\nname = \"b\"\nranks = \"7-15\"",
    TopoError::RankListedTwice { rank: 7, .. },
    "rank 7 is listed in domain \"a\" and again in domain \"b\""
);
bad_file!(
    rank_twice_in_one_domain,
    "[[domain]]\nname = \"a\"\nranks = [0, 1, 1]",
    TopoError::RankListedTwice { rank: 1, .. },
    "rank 1"
);
bad_file!(
    gap_in_the_ranks,
    "[[domain]]\nname = \"a\"\nranks = \"0-3\"\n[[domain]]\nname = \"b\"\nranks = \"5-8\"",
    TopoError::RankWithoutDomain { rank: 4, .. },
    "rank 4 is in no domain"
);
bad_file!(
    empty_domain,
    "[[domain]]\nname = \"a\"\nranks = []",
    TopoError::EmptyDomain { .. },
    "domain \"a\" has no ranks"
);
bad_file!(
    duplicate_domain_name,
    "[[domain]]\nname = \"a\"\nranks = \"0-3\"\n[[domain]]\nname = \"a\"\nranks = \"4-7\"",
    TopoError::DuplicateDomainName { .. },
    "two domains are named \"a\""
);
bad_file!(
    malformed_rank_list,
    "[[domain]]\nname = \"a\"\nranks = \"0-3;4-7\"",
    TopoError::InvalidRankList { .. },
    "0-3;4-7"
);
bad_file!(
    downward_rank_range,
    "[[domain]]\nname = \"a\"\nranks = \"7-0\"",
    TopoError::InvalidRankList { .. },
    "downwards"
);
bad_file!(
    absurd_rank_range,
    "[[domain]]\nname = \"a\"\nranks = \"0-4000000000\"",
    TopoError::InvalidRankList { .. },
    "more ranks"
);
bad_file!(
    rank_list_of_the_wrong_type,
    "[[domain]]\nname = \"a\"\nranks = 8",
    TopoError::Syntax { .. },
    "rank list"
);
bad_file!(
    override_of_an_unknown_rank,
    "[[domain]]\nname = \"a\"\nranks = \"0-7\"\n[[rank]]\nid = 8\nlinks = { scale_out_gb_per_s = 25 }",
    TopoError::UnknownRank { rank: 8, .. },
    "rank 8 does not exist"
);
bad_file!(
    rank_overridden_twice,
    "[[domain]]\nname = \"a\"\nranks = \"0-7\"\n[[rank]]\nid = 2\nlinks = { scale_out_gb_per_s = 25 }\n[[rank]]\nid = 2\nlinks = { scale_out_gb_per_s = 20 }",
    TopoError::RankOverriddenTwice { rank: 2 },
    "rank 2"
);
bad_file!(
    not_toml_at_all,
    "[[domain]\nname = ",
    TopoError::Syntax { .. },
    "line"
);
bad_file!(
    invalid_accelerator_memory,
    "[accelerator]\nname = \"x\"\ndense_bf16_tflops = 989\nmemory_tb_per_s = 3.35\nmemory_gb = 0\n[[domain]]\nname = \"a\"\nranks = \"0-7\"",
    TopoError::InvalidFigure {
        key: "memory_gb",
        ..
    },
    "accelerator \"x\""
);

#[test]
fn missing_figure_names_the_key_and_the_domain() {
    let text = "name = \"t\"\n[[domain]]\nname = \"a\"\nranks = \"0-7\"\nlinks = { scale_up_egress_gb_per_s = 1 }";
    let error = Topology::from_toml_str(text).unwrap_err();
    assert_eq!(
        error.to_string(),
        "scale_up_ingress_gb_per_s is not given for domain \"a\": set it in [links] or in the domain's links"
    );
}

#[test]
fn missing_name_is_a_syntax_error() {
    let error = Topology::from_toml_str(LINKS).unwrap_err();
    assert!(matches!(error, TopoError::Syntax { .. }));
    assert!(error.to_string().contains("name"), "{error}");
}

#[test]
fn overrides_layer_on_their_domain() {
    let text = format!(
        "name = \"t\"\n{LINKS}\n[[domain]]\nname = \"a\"\nranks = \"0-7\"\nlinks = {{ scale_out_gb_per_s = 25 }}\n[[rank]]\nid = 3\nlinks = {{ scale_up_egress_gb_per_s = 225 }}"
    );
    let topo = Topology::from_toml_str(&text).unwrap();
    let three = topo.links(ultraep_topo::RankId(3)).unwrap();
    assert_eq!(three.scale_up_egress.get(), 225_000_000_000);
    assert_eq!(three.scale_out.get(), 25_000_000_000, "domain figure kept");
    assert_eq!(
        three.scale_up_ingress.get(),
        450_000_000_000,
        "file default kept"
    );
}
