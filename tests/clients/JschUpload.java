// Uploads one file with JSch (Debian's libjsch-java) and ChannelSftp.put; tests/clients.rs
// compiles it with `javac -cp /usr/share/java/jsch.jar` and runs it against the real gateway.
//
//   java -cp jsch.jar:DIR JschUpload HOST PORT USER KEY_FILE LOCAL_FILE REMOTE_PATH
//
// Exit 0 once put() returned and the channel and session are closed; 1 with the exception
// on stderr otherwise (a refused key exchange, authentication or SFTP request).

import com.jcraft.jsch.ChannelSftp;
import com.jcraft.jsch.JSch;
import com.jcraft.jsch.Session;

public class JschUpload {
    public static void main(String[] args) {
        if (args.length != 6) {
            System.err.println("usage: JschUpload HOST PORT USER KEY_FILE LOCAL_FILE REMOTE_PATH");
            System.exit(2);
        }
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        String user = args[2];
        String key = args[3];
        String local = args[4];
        String remote = args[5];
        System.err.println("JSch version " + JSch.VERSION);
        Session session = null;
        ChannelSftp sftp = null;
        try {
            JSch jsch = new JSch();
            jsch.addIdentity(key);
            session = jsch.getSession(user, host, port);
            session.setConfig("StrictHostKeyChecking", "no");
            session.setConfig("PreferredAuthentications", "publickey");
            session.connect(30000);
            System.err.println("connected to " + session.getServerVersion()
                + ", host key " + session.getHostKey().getType());
            sftp = (ChannelSftp) session.openChannel("sftp");
            sftp.connect(30000);
            sftp.put(local, remote);
            System.err.println("uploaded " + local + " to " + remote);
            sftp.disconnect();
            session.disconnect();
            System.exit(0);
        } catch (Exception e) {
            System.err.println("JschUpload failed: " + e);
            e.printStackTrace();
            if (sftp != null) {
                sftp.disconnect();
            }
            if (session != null) {
                session.disconnect();
            }
            System.exit(1);
        }
    }
}
