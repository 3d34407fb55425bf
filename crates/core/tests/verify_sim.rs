//! The verifier against the simulated TD: every tampered part of a quote is named, and the
//! default policy's rules each reject on their own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

use tdx_core::verify::*;
use tdx_sim::{SimFixture, SimSettings, TD_ATTR_DEBUG, TD_ATTR_SEPT_VE_DISABLE};

struct Sim {
    _tmp: tempfile::TempDir,
    fx: SimFixture,
    now: i64,
}

fn sim(settings: SimSettings) -> Sim {
    let tmp = tempfile::tempdir().unwrap();
    let fx = SimFixture::create(tmp.path(), settings).unwrap();
    Sim {
        _tmp: tmp,
        fx,
        now: time::now_unix(),
    }
}

impl Sim {
    fn collateral(&self) -> PreparedCollateral {
        self.fx
            .collateral(self.now as u64)
            .unwrap()
            .prepare()
            .unwrap()
    }

    fn appraise_with(&self, quote: &[u8], policy: &Policy, at: i64) -> Report {
        Verifier::with_insecure_root(self.fx.root_der().to_vec()).appraise(
            quote,
            &self.collateral(),
            at,
            policy,
            &Expectations::default(),
        )
    }

    fn appraise(&self, quote: &[u8]) -> Report {
        self.appraise_with(quote, &Policy::default(), self.now)
    }

    fn quote(&self) -> Vec<u8> {
        self.fx.quote(&[0x42; 64]).unwrap()
    }
}

fn only_failure(r: &Report) -> String {
    let failures: Vec<&Check> = r.failures().collect();
    assert_eq!(failures.len(), 1, "{}", r.render_text());
    failures[0].name.clone()
}

/// Flip one byte of the DER of certificate `index` in the quote's PEM chain, keeping the PEM
/// text the same length so the declared lengths still add up.
fn flip_pem_der(quote: &[u8], index: usize, at: usize) -> Vec<u8> {
    use base64::Engine as _;
    let q = tdx_core::quote::Quote::parse(quote).unwrap();
    let range = q.ranges.pck_chain.clone();
    let text = std::str::from_utf8(&quote[range.clone()])
        .unwrap()
        .to_string();
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let start = text.match_indices(begin).nth(index).unwrap().0 + begin.len();
    let stop = start + text[start..].find(end).unwrap();
    let body = &text[start..stop];
    let b64: String = body.split_whitespace().collect();
    let mut der = base64::engine::general_purpose::STANDARD
        .decode(&b64)
        .unwrap();
    der[at] ^= 0x01;
    let new_b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    assert_eq!(new_b64.len(), b64.len());
    let mut chars = new_b64.chars();
    let new_body: String = body
        .chars()
        .map(|c| {
            if c.is_whitespace() {
                c
            } else {
                chars.next().unwrap()
            }
        })
        .collect();
    let mut out = quote.to_vec();
    out[range.start + start..range.start + stop].copy_from_slice(new_body.as_bytes());
    out
}

#[test]
fn simulated_quotes_verify_up_to_date_v4_and_v5() {
    for version in [4, 5] {
        let s = sim(SimSettings {
            quote_version: version,
            ..SimSettings::default()
        });
        let r = s.appraise(&s.quote());
        assert!(r.accepted(), "v{version}: {}", r.render_text());
        assert_eq!(r.tcb_status(), Some("UpToDate"));
        assert_eq!(r.quote_version(), Some(version));
        assert_eq!(r.root().kind, "insecure");
        assert!(!r.warnings().is_empty());
    }
}

#[test]
fn simulated_quotes_fail_against_the_production_root() {
    let s = sim(SimSettings::default());
    let r = Verifier::production().appraise(
        &s.quote(),
        &s.collateral(),
        s.now,
        &Policy::default(),
        &Expectations::default(),
    );
    assert_eq!(only_failure(&r), CHECK_EMBEDDED_ROOT);
}

#[test]
fn every_tampered_part_is_named() {
    let s = sim(SimSettings::default());
    let good = s.quote();
    let q = tdx_core::quote::Quote::parse(&good).unwrap();
    let r = q.ranges.clone();
    let mid = |range: &std::ops::Range<usize>| range.start + range.len() / 2;
    let flips: Vec<(&str, usize, &str)> = vec![
        ("header (user data)", 40, CHECK_QUOTE_SIG),
        ("header (QE vendor id)", 14, CHECK_QE_VENDOR),
        ("body (MRTD)", r.body.start + 140, CHECK_QUOTE_SIG),
        ("body (REPORTDATA)", r.body.start + 530, CHECK_QUOTE_SIG),
        ("quote signature", mid(&r.quote_signature), CHECK_QUOTE_SIG),
        ("attestation key", mid(&r.attestation_key), CHECK_AK_BINDING),
        ("QE report", mid(&r.qe_report), CHECK_QE_REPORT_SIG),
        (
            "QE report signature",
            mid(&r.qe_report_signature),
            CHECK_QE_REPORT_SIG,
        ),
        ("QE auth data", mid(&r.qe_auth_data), CHECK_AK_BINDING),
    ];
    for (what, at, check) in flips {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let report = s.appraise(&bad);
        assert_eq!(only_failure(&report), check, "flipping {what}");
    }
    let certs = q.pck_chain_der().unwrap();
    for (index, what, check) in [
        (0, "PCK leaf", CHECK_PCK_CHAIN),
        (1, "intermediate CA", CHECK_PCK_CHAIN),
        (2, "embedded root", CHECK_EMBEDDED_ROOT),
    ] {
        // A byte inside the signed part (TBS) and one in the signature value.
        for at in [certs[index].len() / 3, certs[index].len() - 5] {
            let bad = flip_pem_der(&good, index, at);
            let report = s.appraise(&bad);
            assert!(!report.accepted(), "{what} byte {at}");
            assert_eq!(only_failure(&report), check, "{what} byte {at}");
        }
    }
}

#[test]
fn default_policy_rejects_debug_sept_off_and_service_td_each_alone() {
    let s = sim(SimSettings::default());
    let debug =
        s.fx.quote_builder(&[1; 64])
            .unwrap()
            .debug(true)
            .build()
            .unwrap();
    assert_eq!(only_failure(&s.appraise(&debug)), CHECK_DEBUG);

    let sept_off =
        s.fx.quote_builder(&[1; 64])
            .unwrap()
            .sept_ve_disable(false)
            .build()
            .unwrap();
    assert_eq!(only_failure(&s.appraise(&sept_off)), CHECK_SEPT);

    let service_td =
        s.fx.quote_builder(&[1; 64])
            .unwrap()
            .mrservicetd([9; 48])
            .build()
            .unwrap();
    assert_eq!(only_failure(&s.appraise(&service_td)), CHECK_SERVICETD);

    let mut p = Policy::default();
    p.td.allowed_mrservicetd.push(policy::HexBytes([9; 48]));
    assert!(s.appraise_with(&service_td, &p, s.now).accepted());
    p.td.insecure_allow_debug = true;
    assert!(s.appraise_with(&debug, &p, s.now).accepted());
    assert_eq!(TD_ATTR_DEBUG, 1);
    assert_eq!(TD_ATTR_SEPT_VE_DISABLE, 1 << 28);
}

#[test]
fn default_policy_accepts_up_to_date_only() {
    let s = sim(SimSettings {
        tcb_status: "OutOfDate".into(),
        advisory_ids: vec!["INTEL-SA-00837".into()],
        ..SimSettings::default()
    });
    let quote = s.quote();
    let r = s.appraise(&quote);
    assert_eq!(only_failure(&r), CHECK_TCB_STATUS);
    assert_eq!(r.tcb_status(), Some("OutOfDate"));
    assert!(
        r.check(CHECK_TCB_STATUS)
            .unwrap()
            .found
            .contains("INTEL-SA-00837")
    );

    let mut p = Policy::default();
    p.tcb.accepted_statuses.insert(TcbStatus::OutOfDate);
    assert!(s.appraise_with(&quote, &p, s.now).accepted());
    p.tcb.accepted_advisory_ids.insert("INTEL-SA-00001".into());
    assert_eq!(
        only_failure(&s.appraise_with(&quote, &p, s.now)),
        "TCB advisories"
    );
}

#[test]
fn collateral_window_is_half_open_on_simulated_collateral() {
    let s = sim(SimSettings {
        collateral_lifetime_secs: 120,
        ..SimSettings::default()
    });
    let quote = s.quote();
    let next = s.collateral().window().next_update();
    assert!(
        s.appraise_with(&quote, &Policy::default(), next - 1)
            .accepted()
    );
    let r = s.appraise_with(&quote, &Policy::default(), next);
    assert_eq!(only_failure(&r), CHECK_WINDOW);
    let nb = s.collateral().window().not_before();
    assert_eq!(
        only_failure(&s.appraise_with(&quote, &Policy::default(), nb - 1)),
        CHECK_WINDOW
    );
}

#[test]
fn minimum_evaluation_number_and_pins_apply() {
    let s = sim(SimSettings::default());
    let quote = s.quote();
    let mut p = Policy::default();
    p.tcb.min_tcb_evaluation_data_number = 1000;
    assert_eq!(
        only_failure(&s.appraise_with(&quote, &p, s.now)),
        CHECK_EVAL_NUMBER
    );
    let mut p = Policy::default();
    p.measurements.rtmr3 = vec![policy::HexBytes([5; 48])];
    assert_eq!(only_failure(&s.appraise_with(&quote, &p, s.now)), "RTMR3");
}

/// The profiling bits belong to the TD-under-debug group with DEBUG: a host that set one can
/// observe the TD. dcap-qvl's `allow_debug`, which leaves DEBUG to the policy, stops it
/// refusing them too, so the policy's DEBUG check must.
#[test]
fn profiling_bits_are_refused_like_debug() {
    for (bit, name) in [(4, "HGS_PLUS_PROF"), (5, "PERF_PROF"), (6, "PMT_PROF")] {
        let s = sim(SimSettings {
            td_attributes: TD_ATTR_SEPT_VE_DISABLE | (1 << bit),
            ..SimSettings::default()
        });
        let quote = s.quote();
        let r = s.appraise(&quote);
        assert_eq!(only_failure(&r), CHECK_DEBUG, "bit {bit}");
        let found = &r.check(CHECK_DEBUG).unwrap().found;
        assert!(found.contains(name) && found.contains("profile"), "{found}");
        let mut lax = Policy::default();
        lax.td.insecure_allow_debug = true;
        assert!(s.appraise_with(&quote, &lax, s.now).accepted(), "bit {bit}");
    }
}

/// SERVTD_EXT lets a service TD be bound after creation, which the quoted (zero) MRSERVICETD
/// does not show: refused unless the policy accepts some bound service TD. (In a TD 1.0 body,
/// which a TD with service TDs never gets, dcap-qvl refuses it itself.)
#[test]
fn servtd_ext_is_refused_unless_a_service_td_is_accepted() {
    let v4 = sim(SimSettings {
        td_attributes: TD_ATTR_SEPT_VE_DISABLE | (1 << 17),
        ..SimSettings::default()
    });
    assert_eq!(only_failure(&v4.appraise(&v4.quote())), CHECK_TD_ATTRIBUTES);
    let s = sim(SimSettings {
        td_attributes: TD_ATTR_SEPT_VE_DISABLE | (1 << 17),
        quote_version: 5,
        ..SimSettings::default()
    });
    let quote = s.quote();
    let r = s.appraise(&quote);
    assert_eq!(only_failure(&r), CHECK_SERVICETD);
    assert!(
        r.check(CHECK_SERVICETD)
            .unwrap()
            .found
            .contains("SERVTD_EXT"),
        "{}",
        r.render_text()
    );
    let accepting: Policy = toml::from_str(&format!(
        "[td]\nallowed_mrservicetd = [\"{}\", \"{}\"]\n",
        "00".repeat(48),
        "ab".repeat(48)
    ))
    .unwrap();
    assert!(
        s.appraise_with(&quote, &accepting, s.now).accepted(),
        "{}",
        s.appraise_with(&quote, &accepting, s.now).render_text()
    );
}

/// A policy pinning only what any image can reproduce (RTMR3, its events, the owner registers)
/// is warned of, naming the image registers it leaves open; one pinning the image is not.
#[test]
fn a_policy_that_does_not_pin_the_image_is_warned_of() {
    let s = sim(SimSettings::default());
    let quote = s.quote();
    let body = tdx_core::quote::Quote::parse(&quote).unwrap().body;
    let mut p = Policy::default();
    p.measurements.rtmr3 = vec![policy::HexBytes(body.rtmr[3])];
    let r = s.appraise_with(&quote, &p, s.now);
    assert!(r.accepted(), "{}", r.render_text());
    assert!(
        r.warnings()
            .iter()
            .any(|w| w.contains("MRTD, RTMR0, RTMR1, RTMR2 unpinned")),
        "{:?}",
        r.warnings()
    );
    p.measurements.mrtd = vec![policy::HexBytes(body.mrtd)];
    p.measurements.rtmr0 = vec![policy::HexBytes(body.rtmr[0])];
    p.measurements.rtmr1 = vec![policy::HexBytes(body.rtmr[1])];
    let r = s.appraise_with(&quote, &p, s.now);
    assert!(
        r.warnings().iter().any(|w| w.contains("(RTMR2 unpinned)")),
        "{:?}",
        r.warnings()
    );
    p.measurements.rtmr2 = vec![policy::HexBytes(body.rtmr[2])];
    let r = s.appraise_with(&quote, &p, s.now);
    assert!(r.accepted(), "{}", r.render_text());
    assert!(
        !r.warnings().iter().any(|w| w.contains("unpinned")),
        "{:?}",
        r.warnings()
    );
}
