//! `enforcer check-kernel`: the kernel features the datapath uses (present or not, the first
//! release that has each, the fallback or refusal without it: `datapath::features`), then which
//! kernel TCP hook forms load and attach here, and precisely why the others do not. Attaches
//! nothing permanently: every form tried is unloaded again.

use anyhow::Result;
use aya::Btf;

use crate::datapath::{
    btf, features,
    hooks::{self, HookError, HookForm},
    loader,
};

/// `kernel <release>`, one `feature <name>: yes|no ...` line per feature, and `refused: ...` if
/// the agent would refuse this kernel. Then one line per form: `FORM: attaches (targets)`,
/// `FORM: loads, cannot attach: ...`, or `FORM: cannot load: ...`, and the form `auto` would
/// pick. Fails if the agent would refuse the kernel or no form works.
pub fn run() -> Result<()> {
    let release = features::release();
    println!("kernel {release}");
    let statuses = features::probe()?;
    for s in &statuses {
        println!("{}", s.line());
    }
    let refusal = features::refusal(&statuses, &release);
    if let Some(why) = &refusal {
        println!("refused: {why}");
    }
    let offsets = btf::sock_offsets()?;
    let mut ebpf = match (loader::load(&offsets), &refusal) {
        (Ok(ebpf), _) => ebpf,
        (Err(e), Some(why)) => anyhow::bail!("{why} (loading the eBPF object: {e})"),
        (Err(e), None) => return Err(e.into()),
    };
    let kernel_btf = Btf::from_sys_fs().ok();
    let mut chosen = None;
    for form in HookForm::ALL {
        match hooks::attach_form(&mut ebpf, form, kernel_btf.as_ref()) {
            Ok(targets) => {
                println!("{form}: attaches ({})", targets.join(", "));
                hooks::detach_form(&mut ebpf, form);
                chosen.get_or_insert(form);
            }
            Err(err @ HookError::Attach { .. }) => println!("{form}: loads, cannot attach: {err}"),
            Err(err) => println!("{form}: cannot load: {err}"),
        }
    }
    match (chosen, refusal) {
        (_, Some(why)) => anyhow::bail!(why),
        (Some(form), None) => {
            println!("auto: {form}");
            Ok(())
        }
        (None, None) => anyhow::bail!("no kernel TCP hook form works on this kernel"),
    }
}
