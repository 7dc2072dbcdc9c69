//! The embedded interpreter, one job per module: finding, trusting and
//! starting the Python installation ([`installation`]), one interpreter's
//! state ([`state`], with its interned environ [`keys`]), and finding the
//! application for a request across application groups ([`apps`]).

mod apps;
mod installation;
mod keys;
mod state;

pub use apps::{Options, Runtime};
pub use installation::{
    adopt_pythonpath, build_python, init_python, misconfigured, other_build, DISPATCHED,
};
pub use keys::{Key, Keys};
pub use state::{Interp, RequestObject};
