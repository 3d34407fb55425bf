//! Tests of the simulation against the real verifier (dcap-qvl), never against itself.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha384};

use super::*;
use tdx_tee::{Rtmr, Tee, TeeKind};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rd(tag: u8) -> ReportData {
    let mut r = [0u8; 64];
    for (i, b) in r.iter_mut().enumerate() {
        *b = tag ^ (i as u8);
    }
    r
}

fn fixture(settings: SimSettings) -> (tempfile::TempDir, SimFixture) {
    let tmp = tempfile::tempdir().unwrap();
    let fx = SimFixture::create(&tmp.path().join("sim"), settings).unwrap();
    (tmp, fx)
}

fn verify(
    fx: &SimFixture,
    quote: &[u8],
    now: u64,
) -> anyhow::Result<dcap_qvl::verify::VerifiedReport> {
    let coll = fx.collateral(now).unwrap();
    fx.verifier().verify(quote, &(&coll).into(), now)
}

#[test]
fn v4_quote_verifies_up_to_date_with_sim_registers() {
    let (_t, fx) = fixture(SimSettings::default());
    let quote = fx.quote(&rd(1)).unwrap();
    let t = now();
    let report = verify(&fx, &quote, t).unwrap();
    assert_eq!(report.status, "UpToDate");
    assert!(report.advisory_ids.is_empty());
    let td = report.report.as_td10().unwrap();
    assert!(report.report.as_td15().is_none());
    let m = fx.td.measurements().unwrap();
    let s = SimSettings::default();
    assert_eq!(td.report_data, rd(1));
    assert_eq!(td.mr_td, s.mrtd);
    assert_eq!(td.mr_td, m.mrtd);
    assert_eq!(td.rt_mr0, s.rtmr0);
    assert_eq!(td.rt_mr1, s.rtmr1);
    assert_eq!(td.rt_mr2, s.rtmr2);
    assert_eq!(td.rt_mr3, [0; 48]);
    assert_eq!(td.mr_config_id, s.mrconfigid);
    assert_eq!(td.mr_owner, s.mrowner);
    assert_eq!(td.mr_owner_config, s.mrownerconfig);
    assert_eq!(
        u64::from_le_bytes(td.td_attributes),
        TD_ATTR_SEPT_VE_DISABLE
    );
    assert_eq!(u64::from_le_bytes(td.xfam), 0x61ae7);
    assert_eq!(td.tee_tcb_svn, SIM_TEE_TCB_SVN);
    // Layout per docs/design.md §3: v4 header, then the 584-byte body, then the signature length.
    assert_eq!(&quote[0..2], &[4, 0]);
    assert_eq!(&quote[12..28], &QE_VENDOR_ID);
    assert_eq!(&quote[48 + 520..48 + 584], &rd(1));
    let sig_len = u32::from_le_bytes(quote[632..636].try_into().unwrap()) as usize;
    assert_eq!(quote.len(), 636 + sig_len);
    assert_eq!(fx.td.kind(), TeeKind::Simulated);
}

#[test]
fn v5_quote_verifies_with_td15_body() {
    let settings = SimSettings {
        quote_version: 5,
        ..Default::default()
    };
    let (_t, fx) = fixture(settings);
    let quote = fx.quote(&rd(2)).unwrap();
    assert_eq!(&quote[0..2], &[5, 0]);
    assert_eq!(&quote[48..50], &[3, 0]);
    assert_eq!(u32::from_le_bytes(quote[50..54].try_into().unwrap()), 648);
    let report = verify(&fx, &quote, now()).unwrap();
    assert_eq!(report.status, "UpToDate");
    let td15 = report.report.as_td15().unwrap();
    assert_eq!(td15.base.report_data, rd(2));
    assert_eq!(td15.mr_service_td, [0; 48]);
    assert_eq!(td15.tee_tcb_svn2, SIM_TEE_TCB_SVN);
}

#[test]
fn sim_quote_fails_against_intel_root() {
    let (_t, fx) = fixture(SimSettings::default());
    let quote = fx.quote(&rd(3)).unwrap();
    let t = now();
    let coll = fx.collateral(t).unwrap();
    let err = dcap_qvl::verify::QuoteVerifier::new_prod()
        .verify(&quote, &(&coll).into(), t)
        .unwrap_err();
    assert!(!format!("{err:#}").is_empty());
    // ... while the same inputs pass with the simulated root.
    fx.verifier().verify(&quote, &(&coll).into(), t).unwrap();
}

#[test]
fn expired_collateral_is_rejected() {
    let settings = SimSettings {
        collateral_lifetime_secs: 10,
        ..Default::default()
    };
    let (_t, fx) = fixture(settings);
    let quote = fx.quote(&rd(4)).unwrap();
    let t = now();
    let coll = fx.collateral(t).unwrap();
    let v = fx.verifier();
    // webpki treats a CRL as expired at nextUpdate itself, so the last good second is t + 9.
    v.verify(&quote, &(&coll).into(), t + 9).unwrap();
    let err = v.verify(&quote, &(&coll).into(), t + 11).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("expired") || msg.contains("Expired"), "{msg}");
    // Issued a minute back: a verifier whose clock lags a little still accepts it.
    v.verify(&quote, &(&coll).into(), t - 60).unwrap();
    assert!(v.verify(&quote, &(&coll).into(), t - 61).is_err());
}

#[test]
fn tampered_quote_is_rejected() {
    let (_t, fx) = fixture(SimSettings::default());
    let mut quote = fx.quote(&rd(5)).unwrap();
    quote[48 + 136] ^= 1; // a bit of MRTD
    assert!(verify(&fx, &quote, now()).is_err());
}

#[test]
fn extend_rtmr_and_survive_reopen_then_reset() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sim");
    let fx = SimFixture::create(&path, SimSettings::default()).unwrap();
    let digest: [u8; 48] = Sha384::digest(b"event").into();
    let before = fx.td.measurements().unwrap().rtmr[3];
    fx.td.extend_rtmr(Rtmr::R3, &digest).unwrap();
    let mut h = Sha384::new();
    h.update(before);
    h.update(digest);
    let expected: [u8; 48] = h.finalize().into();
    assert_eq!(fx.td.measurements().unwrap().rtmr[3], expected);
    // Other registers are untouched.
    assert_eq!(
        fx.td.measurements().unwrap().rtmr[2],
        SimSettings::default().rtmr2
    );
    drop(fx);

    // A restarted agent (new process state) sees the extended value, in quotes too.
    let dir = SimDir::open(&path).unwrap();
    let td = SimTd::open(&dir).unwrap();
    assert_eq!(td.measurements().unwrap().rtmr[3], expected);
    let quote = td.quote(&rd(6)).unwrap();
    let coll = td.pki().collateral(now()).unwrap();
    let report = dcap_qvl::verify::QuoteVerifier::new(dir.root_der().unwrap())
        .verify(&quote, &(&coll).into(), now())
        .unwrap();
    assert_eq!(report.report.as_td10().unwrap().rt_mr3, expected);

    // Reboot: back to boot values.
    td.reset().unwrap();
    let m = td.measurements().unwrap();
    assert_eq!(m.rtmr[3], [0; 48]);
    assert_eq!(m.mrtd, SimSettings::default().mrtd);
    td.extend_rtmr(Rtmr::R3, &digest).unwrap();
    reset(&dir).unwrap();
    assert_eq!(td.measurements().unwrap().rtmr[3], [0; 48]);
}

#[test]
fn debug_td_is_rejected_unless_allowed() {
    let settings = SimSettings {
        td_attributes: TD_ATTR_SEPT_VE_DISABLE | TD_ATTR_DEBUG,
        ..Default::default()
    };
    let (_t, fx) = fixture(settings);
    let quote = fx.quote(&rd(7)).unwrap();
    let t = now();
    let coll = fx.collateral(t).unwrap();
    let err = fx
        .verifier()
        .verify(&quote, &(&coll).into(), t)
        .unwrap_err();
    assert!(format!("{err:#}").contains("Debug"), "{err:#}");
    let report = fx
        .verifier()
        .allow_debug(true)
        .verify(&quote, &(&coll).into(), t)
        .unwrap();
    assert_eq!(report.status, "UpToDate");
}

#[test]
fn builder_knobs_make_quotes_dcap_qvl_rejects() {
    let (_t, fx) = fixture(SimSettings::default());
    let t = now();
    let coll: dcap_qvl::QuoteCollateralV3 = (&fx.collateral(t).unwrap()).into();
    let v = fx.verifier();

    let q = fx
        .quote_builder(&rd(8))
        .unwrap()
        .sept_ve_disable(false)
        .build()
        .unwrap();
    let e = v.verify(&q, &coll, t).unwrap_err();
    assert!(format!("{e:#}").contains("SEPT_VE_DISABLE"), "{e:#}");

    let q = fx
        .quote_builder(&rd(8))
        .unwrap()
        .mrservicetd([9; 48])
        .build()
        .unwrap();
    let e = v.verify(&q, &coll, t).unwrap_err();
    assert!(format!("{e:#}").contains("service TD"), "{e:#}");
    v_allow_service(&fx, &q, &coll, t);

    let q = fx
        .quote_builder(&rd(8))
        .unwrap()
        .debug(true)
        .build()
        .unwrap();
    assert!(v.verify(&q, &coll, t).is_err());

    // Lower module SVN falls to the OutOfDate module level: dcap-qvl returns Ok with the status.
    let mut b = fx.quote_builder(&rd(8)).unwrap();
    b.tee_tcb_svn[0] = 1;
    let r = v.verify(&b.build().unwrap(), &coll, t).unwrap();
    assert_eq!(r.status, "OutOfDate");

    // The unmodified builder is what the TD produces.
    let q = fx.quote_builder(&rd(8)).unwrap().build().unwrap();
    assert_eq!(v.verify(&q, &coll, t).unwrap().status, "UpToDate");
}

fn v_allow_service(fx: &SimFixture, q: &[u8], coll: &dcap_qvl::QuoteCollateralV3, t: u64) {
    let r = fx
        .verifier()
        .allow_service_td(true)
        .verify(q, coll, t)
        .unwrap();
    assert_eq!(r.report.as_td15().unwrap().mr_service_td, [9; 48]);
}

#[test]
fn tcb_status_and_advisories_come_from_settings() {
    let settings = SimSettings {
        tcb_status: "OutOfDate".into(),
        advisory_ids: vec!["INTEL-SA-00837".into()],
        tcb_evaluation_data_number: 19,
        ..Default::default()
    };
    let (_t, fx) = fixture(settings);
    let quote = fx.quote(&rd(9)).unwrap();
    let report = verify(&fx, &quote, now()).unwrap();
    assert_eq!(report.status, "OutOfDate");
    assert_eq!(report.advisory_ids, vec!["INTEL-SA-00837".to_string()]);
    let coll = fx.collateral(now()).unwrap();
    assert!(coll.tcb_info.contains("\"tcbEvaluationDataNumber\":19"));

    let (_t2, fx) = fixture(SimSettings {
        tcb_status: "Revoked".into(),
        ..Default::default()
    });
    let quote = fx.quote(&rd(9)).unwrap();
    assert!(verify(&fx, &quote, now()).is_err());
}

#[test]
fn quote_delay_is_honoured() {
    let (_t, fx) = fixture(SimSettings {
        quote_delay_ms: 150,
        ..Default::default()
    });
    let start = std::time::Instant::now();
    fx.quote(&rd(10)).unwrap();
    assert!(start.elapsed() >= std::time::Duration::from_millis(150));
}

#[test]
fn open_requires_a_complete_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sim");
    let e = SimDir::open(&path).unwrap_err().to_string();
    assert!(e.contains("tdx-agent sim pki --sim-dir"), "{e}");

    let dir = SimDir::open_or_create(&path).unwrap();
    let root = dir.root_der().unwrap();
    SimDir::open(&path).unwrap();
    // Opening again keeps the same PKI (clients already trust that root).
    let again = SimDir::open_or_create(&path).unwrap();
    assert_eq!(again.root_der().unwrap(), root);
    assert_eq!(SimPki::load(&again).unwrap().root_der(), root.as_slice());

    // Half-made: a PKI file gone. open says how to fix it; open_or_create refuses to paper
    // over it.
    std::fs::remove_file(path.join("pki").join("pck.der")).unwrap();
    let e = SimDir::open(&path).unwrap_err().to_string();
    assert!(e.contains("tdx-agent sim pki --sim-dir"), "{e}");
    let e = SimDir::open_or_create(&path).unwrap_err().to_string();
    assert!(e.contains("half-made"), "{e}");
}

#[test]
fn mismatched_key_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sim");
    SimDir::open_or_create(&path).unwrap();
    let pki = path.join("pki");
    std::fs::copy(pki.join("pck-ca.key.pem"), pki.join("pck.key.pem")).unwrap();
    let dir = SimDir::open(&path).unwrap();
    let e = SimPki::load(&dir).unwrap_err().to_string();
    assert!(e.contains("does not match its key"), "{e}");
}

#[test]
fn invalid_settings_file_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sim");
    let dir = SimDir::open_or_create(&path).unwrap();
    std::fs::write(dir.settings_path(), r#"{"quote_version": 6}"#).unwrap();
    let e = SimDir::open(&path)
        .and_then(|d| d.settings())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("quote_version") && e.contains("settings.json"),
        "{e}"
    );
    assert!(
        SimFixture::create(
            &path,
            SimSettings {
                quote_version: 6,
                ..Default::default()
            }
        )
        .is_err()
    );
}

#[test]
fn boot_event_log_is_unavailable() {
    let (_t, fx) = fixture(SimSettings::default());
    let e = fx.td.boot_event_log().unwrap_err().to_string();
    assert!(e.contains("no CCEL"), "{e}");
}

#[test]
fn pck_certificate_carries_the_sgx_extension() {
    let (_t, fx) = fixture(SimSettings::default());
    let ext = dcap_qvl::intel::parse_pck_extension(fx.pki.pck_der()).unwrap();
    assert_eq!(ext.fmspc, SIM_FMSPC);
    assert_eq!(ext.cpu_svn, SIM_CPU_SVN);
    assert_eq!(ext.pce_svn, SIM_PCE_SVN);
    assert_eq!(ext.pce_id, SIM_PCE_ID.to_vec());
    assert_eq!(ext.sgx_type, 0);
    assert_eq!(
        dcap_qvl::intel::pck_ca(fx.pki.pck_der()).unwrap(),
        dcap_qvl::config::PckCa::Processor
    );
    let (_, cert) = x509_parser::parse_x509_certificate(fx.pki.pck_der()).unwrap();
    let cn = cert.subject().to_string();
    assert!(
        cn.contains("SGX PCK Certificate") && cn.contains("SIMULATED"),
        "{cn}"
    );
}

#[test]
fn concurrent_creators_share_one_pki() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sim");
    let roots: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| SimDir::open_or_create(&path).unwrap().root_der().unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(roots.windows(2).all(|w| w[0] == w[1]));
    let pki = SimPki::load(&SimDir::open(&path).unwrap()).unwrap();
    assert_eq!(pki.root_der(), roots[0].as_slice());
    // No temp files or dirs left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn malformed_td_state_names_the_file() {
    let (_t, fx) = fixture(SimSettings::default());
    std::fs::write(fx.dir.td_state_path(), "{\"mrtd\": 1}").unwrap();
    let e = fx.td.measurements().unwrap_err().to_string();
    assert!(e.contains("td-state.json"), "{e}");
    assert!(fx.quote(&rd(11)).is_err());
    // Nor is a boot made up for it: an invented id would file this boot's log as another's.
    let e = fx.td.current_boot_id().unwrap_err().to_string();
    assert!(e.contains("td-state.json"), "{e}");
    // A reboot repairs it.
    fx.td.reset().unwrap();
    fx.td.measurements().unwrap();
    assert!(!fx.td.current_boot_id().unwrap().is_empty());
}

/// The fault-injection switch: quotes hang while DIR/quote-hang exists. Through a
/// [`tdx_tee::TeeHandle`], callers that give up do not wedge it: later quotes queue behind
/// the hung one and go through once the switch is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quote_hang_switch_hangs_quotes_until_removed() {
    use std::time::Duration;
    let (_t, fx) = fixture(SimSettings::default());
    let handle = tdx_tee::TeeHandle::new(fx.td.clone());
    let switch = fx.dir.quote_hang_path();
    assert_eq!(switch.file_name().unwrap(), QUOTE_HANG);
    std::fs::write(&switch, b"").unwrap();
    for i in 0..3 {
        let r = tokio::time::timeout(Duration::from_millis(300), handle.quote(rd(i))).await;
        assert!(r.is_err(), "quote {i} answered while the switch exists");
    }
    std::fs::remove_file(&switch).unwrap();
    let quote = tokio::time::timeout(Duration::from_secs(10), handle.quote(rd(9)))
        .await
        .expect("a quote after the switch is removed")
        .unwrap();
    verify(&fx, &quote, now()).unwrap();
}
