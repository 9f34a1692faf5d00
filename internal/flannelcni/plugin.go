package flannelcni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weft-net/weft/internal/subnetenv"
)

// Version is set at build time (-ldflags -X).
var Version = "dev"

// Funcs are the plugin's verbs for skel.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, Status: cmdStatus, GC: cmdGC}
}

// Main runs the plugin as the CNI runtime called it (environment, stdin) and
// exits. Every spec version is served, as flannel's plugin does; the
// delegate must support the version asked for too.
func Main() {
	skel.PluginMainFuncs(Funcs(), version.All, "CNI plugin flannel (weft) version "+Version)
}

func cmdAdd(args *skel.CmdArgs) error {
	n, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	if err := utils.ValidateContainerID(args.ContainerID); err != nil {
		return err
	}
	env, err := ReadEnv(n.SubnetFile)
	if err != nil {
		return err
	}
	d, err := Delegate(n, env)
	if err != nil {
		return err
	}
	conf, err := json.Marshal(d)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("flannel: encode the delegate config: %v", err), "")
	}
	// Saved before the delegate runs: if it fails half way, the runtime's
	// DEL still finds what to undo.
	if err := saveConf(n.DataDir, args.ContainerID, conf); err != nil {
		return err
	}
	typ := d["type"].(string)
	res, err := invoke.DelegateAdd(context.Background(), typ, conf, nil)
	if err != nil {
		return delegateError("ADD", typ, err)
	}
	return types.PrintResult(res, n.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	n, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	if err := utils.ValidateContainerID(args.ContainerID); err != nil {
		return err
	}
	path, conf, err := loadConf(n.DataDir, args.ContainerID)
	if errors.Is(err, fs.ErrNotExist) {
		// Nothing was added, or a DEL already removed it: success (spec).
		return nil
	}
	if err != nil {
		return err
	}
	typ, err := confType(path, conf)
	if err != nil {
		// Nothing can be undone from it, and a DEL that fails forever
		// would block the runtime: drop the file and succeed, as flannel.
		slog.Warn("flannel: DEL: unusable saved delegate config removed; the container's interface stays until its namespace goes", "file", path, "err", err)
		return removeConf(path)
	}
	if err := invoke.DelegateDel(context.Background(), typ, conf, nil); err != nil {
		return delegateError("DEL", typ, err)
	}
	return removeConf(path)
}

func cmdCheck(args *skel.CmdArgs) error {
	n, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	if err := utils.ValidateContainerID(args.ContainerID); err != nil {
		return err
	}
	path, conf, err := loadConf(n.DataDir, args.ContainerID)
	if errors.Is(err, fs.ErrNotExist) {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("flannel: CHECK: container %s was not added to network %q (no %s)", args.ContainerID, n.Name, path), "")
	}
	if err != nil {
		return err
	}
	var d map[string]any
	if err := json.Unmarshal(conf, &d); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("flannel: CHECK: saved delegate config %s: %v", path, err), "")
	}
	typ, err := confType(path, conf)
	if err != nil {
		return err
	}
	// The delegate checks what it made against the runtime's result, in
	// the version the runtime speaks.
	if n.RawPrevResult != nil {
		d["prevResult"] = n.RawPrevResult
	}
	if n.CNIVersion != "" {
		d["cniVersion"] = n.CNIVersion
	}
	conf, err = json.Marshal(d)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("flannel: encode the delegate config: %v", err), "")
	}
	if err := invoke.DelegateCheck(context.Background(), typ, conf, nil); err != nil {
		return delegateError("CHECK", typ, err)
	}
	return nil
}

// cmdStatus reports whether an ADD could succeed now: subnet.env is
// readable and complete, and the delegate is ready.
func cmdStatus(args *skel.CmdArgs) error {
	n, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	typ, conf, err := currentDelegate(n)
	if err != nil {
		var e *types.Error
		if errors.As(err, &e) && e.Code != types.ErrInvalidNetworkConfig {
			return types.NewError(ErrPluginNotAvailable, e.Msg, e.Details)
		}
		return err
	}
	if err := invoke.DelegateStatus(context.Background(), typ, conf, nil); err != nil {
		return delegateError("STATUS", typ, err)
	}
	return nil
}

// cmdGC lets the delegate release what belongs to attachments the runtime
// no longer has (host-local's addresses) and drops their saved configs.
func cmdGC(args *skel.CmdArgs) error {
	n, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	valid := map[string]bool{}
	for _, a := range n.ValidAttachments {
		valid[a.ContainerID] = true
	}
	d, err := currentDelegateMap(n)
	if err != nil {
		return err
	}
	d["cni.dev/valid-attachments"] = n.ValidAttachments
	conf, err := json.Marshal(d)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("flannel: encode the delegate config: %v", err), "")
	}
	typ := d["type"].(string)
	if err := invoke.DelegateGC(context.Background(), typ, conf, nil); err != nil {
		return delegateError("GC", typ, err)
	}
	ents, err := os.ReadDir(n.DataDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("flannel: GC: %v", err), "")
	}
	var errs []error
	for _, e := range ents {
		id := e.Name()
		if valid[id] || !e.Type().IsRegular() || utils.ValidateContainerID(id) != nil {
			continue
		}
		path, saved, err := loadConf(n.DataDir, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// dataDir may be shared with other networks: only this one's.
		var s struct {
			Name string `json:"name"`
		}
		if json.Unmarshal(saved, &s) == nil && s.Name == n.Name {
			if err := removeConf(path); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("flannel: GC: %v", err), "")
	}
	return nil
}

// currentDelegateMap is the delegate config an ADD would use now.
func currentDelegateMap(n *NetConf) (map[string]any, error) {
	env, err := ReadEnv(n.SubnetFile)
	if err != nil {
		return nil, err
	}
	return Delegate(n, env)
}

func currentDelegate(n *NetConf) (typ string, conf []byte, err error) {
	d, err := currentDelegateMap(n)
	if err != nil {
		return "", nil, err
	}
	conf, err = json.Marshal(d)
	if err != nil {
		return "", nil, types.NewError(types.ErrInternal, fmt.Sprintf("flannel: encode the delegate config: %v", err), "")
	}
	return d["type"].(string), conf, nil
}

// delegateError names the delegate and keeps its code.
func delegateError(verb, typ string, err error) error {
	var e *types.Error
	if errors.As(err, &e) {
		return types.NewError(e.Code, fmt.Sprintf("flannel: delegate %s to %s: %s", verb, typ, e.Msg), e.Details)
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("flannel: delegate %s to %s: %v", verb, typ, err), "")
}

// saveConf writes the delegate config of a container where DEL finds it,
// readable by root only (it may hold runtimeConfig).
func saveConf(dataDir, containerID string, conf []byte) error {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("flannel: create dataDir: %v", err), "")
	}
	if err := subnetenv.WriteFileAtomic(filepath.Join(dataDir, containerID), conf, 0o600); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("flannel: save the delegate config: %v", err), "")
	}
	return nil
}

// loadConf reads a container's saved delegate config; a missing file is an
// error for which errors.Is(err, fs.ErrNotExist) holds.
func loadConf(dataDir, containerID string) (string, []byte, error) {
	path := filepath.Join(dataDir, containerID)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return path, nil, err
	}
	if err != nil {
		return path, nil, types.NewError(types.ErrIOFailure, fmt.Sprintf("flannel: read the saved delegate config: %v", err), "")
	}
	return path, b, nil
}

func removeConf(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("flannel: remove the saved delegate config: %v", err), "")
	}
	return nil
}

// confType is the delegate plugin named in a saved config.
func confType(path string, conf []byte) (string, error) {
	var c types.PluginConf
	if err := json.Unmarshal(conf, &c); err != nil {
		return "", types.NewError(types.ErrDecodingFailure, fmt.Sprintf("flannel: saved delegate config %s: %v", path, err), "")
	}
	if c.Type == "" {
		return "", types.NewError(types.ErrDecodingFailure, fmt.Sprintf("flannel: saved delegate config %s: no delegate type", path), "")
	}
	return c.Type, nil
}
